"""Start-up and first-pass cost of the main job, measured in one process.

    python scripts/bench_startup.py --limit 300

Prints the engine start time, then the wall time of three passes of ``vanilla`` over the same
problems (all in flight, greedy) on the same engine, and the first/second pass ratio (target:
at most 1.3). With ``--profile FILE`` the first pass runs under cProfile (this process only: the
engine core's own time is in its process) and the top entries are printed.
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    """Run the passes and print their times."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory or hub id (default: the bundled testbed)")
    ap.add_argument("--limit", type=int, default=300, help="problems per pass, all in flight")
    ap.add_argument("--max-tokens", type=int, default=2048, help="the main job's default")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--profile", default=None, help="cProfile the first pass into this file")
    args = ap.parse_args()

    t0 = time.perf_counter()
    from reasonexit.data.datasets import load_problems
    from reasonexit.engine import DEFAULT_MODEL, EngineConfig, get_session
    from reasonexit.methods import make_method
    from reasonexit.methods.base import Decoding
    from reasonexit.runs.runner import jobs_for, solve_all

    session = get_session(EngineConfig(model=args.model or DEFAULT_MODEL))  # the main job's defaults
    jobs = jobs_for(session, load_problems("synthetic", limit=args.limit))
    t1 = time.perf_counter()
    session.start()
    t2 = time.perf_counter()
    print(f"imports and tokenizer: {t1 - t0:.1f}s; engine start: {t2 - t1:.1f}s (dtype {session.dtype})")
    method, decoding = make_method("vanilla"), Decoding(max_tokens=args.max_tokens)
    walls = []
    for i in range(args.passes):
        prof = None
        if i == 0 and args.profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        start = time.perf_counter()
        results = session.run(solve_all(session, method, jobs, decoding))
        walls.append(time.perf_counter() - start)
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile)
        tokens = sum(r.output_tokens for r in results)
        print(f"pass {i + 1}: {walls[-1]:.1f}s, {tokens} output tokens, {tokens / walls[-1]:.0f} tok/s")
    if len(walls) > 1:
        ratio = walls[0] / walls[1]
        print(f"first/second pass: x{ratio:.2f} (target <= 1.3): {'PASS' if ratio <= 1.3 else 'FAIL'}")
    print(f"main job equivalent (start + first pass): {t2 - t0 + walls[0]:.1f}s (target < 60 s for 300 problems)")
    if args.profile:
        import pstats

        pstats.Stats(args.profile).sort_stats("cumulative").print_stats(15)
    session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
