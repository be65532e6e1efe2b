"""Runs: problems solved by a method on the engine, their run files, results, reports and benchmarks."""
