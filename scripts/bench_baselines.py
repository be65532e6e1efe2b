"""Vanilla vs hard thinking budgets on the synthetic set, in one run on one engine.

    python scripts/bench_baselines.py --limit 300 --budgets 64,128,256

Prints accuracy, output/compute tokens and wall time side by side, and the ratios to vanilla.
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> int:
    """Run the comparison and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--budgets", default="64,128,256")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    from reasonexit.bench import jobs_for, run_config, warm_up
    from reasonexit.datasets import load_problems
    from reasonexit.engine import DEFAULT_MODEL, EngineConfig, get_session
    from reasonexit.methods import make_method
    from reasonexit.methods.base import Decoding
    from reasonexit.report import markdown_table

    session = get_session(EngineConfig(model=args.model or DEFAULT_MODEL, dtype=args.dtype, max_model_len=2048))
    problems = load_problems(args.dataset, limit=args.limit)
    jobs = jobs_for(session, problems)
    decoding = Decoding(max_tokens=args.max_tokens)
    warm_up(session, jobs, decoding)
    runs = [run_config(session, "vanilla", make_method("vanilla"), jobs, decoding)]
    for b in [int(x) for x in args.budgets.split(",") if x]:
        runs.append(
            run_config(session, f"budget-{b}", make_method("budget", {"max_thinking_tokens": b}), jobs, decoding)
        )
    print(f"\n{len(jobs)} problems of {args.dataset}, greedy, all in flight, max_tokens={args.max_tokens}\n")
    print(markdown_table([r.summary for r in runs]))
    base = runs[0].summary
    print("\nratios to vanilla (output tokens, compute tokens, wall time; accuracy difference in points):")
    for r in runs[1:]:
        s = r.summary
        print(
            f"  {r.label}: output x{s['output_tokens'] / base['output_tokens']:.2f}, "
            f"compute x{s['compute_tokens'] / base['output_tokens']:.2f}, wall x{s['wall_s'] / base['wall_s']:.2f}, "
            f"accuracy {s['accuracy'] - base['accuracy']:+.1f}"
        )
    session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
