"""What a GPU user runs first: does reasonexit work on this vLLM build and this model?

    python scripts/gpu_check.py --model Qwen/Qwen3-8B --reasoning-parser qwen3
    python scripts/gpu_check.py                  # the bundled testbed (works on CPU too)

Starts the engine on the model, prints which model runner vLLM chose (V2 is the CUDA build's
default; the CPU build runs V1) and where the thinking markers came from, then runs every
registered method (and both budget implementations) on a few problems: one row per method with
accuracy, output and compute tokens and wall time. Exits 1 if any method fails, 2 on bad input.

No CUDA build of vLLM can be installed on the machines reasonexit is developed on, so this script
is exercised there on CPU (the V1 runner); the test suite runs it that way.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    """Run the check and print its table; the exit status says whether every method ran."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory or hub id (default: the bundled testbed)")
    ap.add_argument("--dataset", default="synthetic", help="dataset name or local file")
    ap.add_argument("--limit", type=int, default=4, help="problems per method")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--reasoning-parser", default=None, help="vLLM reasoning parser (deepseek_r1, qwen3, ...)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    args = ap.parse_args(argv)

    from reasonexit.bench import jobs_for
    from reasonexit.datasets import load_problems
    from reasonexit.engine import DEFAULT_MODEL, EngineConfig, get_session
    from reasonexit.errors import UserError
    from reasonexit.methods import make_method, method_names
    from reasonexit.methods.base import Decoding
    from reasonexit.report import markdown_table, summarize
    from reasonexit.runner import solve_all

    try:
        # Every method is built before the engine starts, so the engine registers their per-step rules.
        methods = [(name, make_method(name)) for name in method_names()]
        methods.append(("budget (impl=reasonexit)", make_method("budget", {"impl": "reasonexit"})))
        config = EngineConfig(
            model=args.model or DEFAULT_MODEL,
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            tensor_parallel_size=args.tensor_parallel_size,
            reasoning_parser=args.reasoning_parser,
        )
        session = get_session(config)
        problems = load_problems(args.dataset, limit=args.limit)
        start = time.perf_counter()
        session.start()
        print(f"engine started in {time.perf_counter() - start:.1f}s")
        jobs = jobs_for(session, problems)
    except UserError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2

    import vllm

    print(f"vllm {vllm.__version__}; model runner: {session.runner}; registered rules: {sorted(session.step_rules)}")
    print(f"model: {config.model}; {session.markers.describe()}")
    decoding = Decoding(max_tokens=args.max_tokens, seed=0)
    rows, failed = [], []
    for label, method in methods:
        start = time.perf_counter()
        try:
            results = session.run(solve_all(session, method, jobs, decoding))
        except Exception as exc:  # noqa: BLE001 - the check reports every failure and goes on
            failed.append(label)
            print(f"FAIL {label}: {type(exc).__name__}: {str(exc).strip().splitlines()[:1]}", file=sys.stderr)
            continue
        wall = time.perf_counter() - start
        summary = summarize([r.to_row() for r in results], run=label, wall_s=wall)
        rows.append(summary)
    if rows:
        print(markdown_table(rows))
    session.close()
    if failed:
        print(f"gpu_check: {len(failed)} of {len(methods)} methods failed: {', '.join(failed)}")
        return 1
    print(f"gpu_check: all {len(methods)} methods ran on the {session.runner} model runner")
    return 0


if __name__ == "__main__":
    sys.exit(main())
