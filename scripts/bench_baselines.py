"""Vanilla vs hard thinking budgets on the synthetic set, in one run on one engine.

    python scripts/bench_baselines.py --limit 300 --budgets 64,128,256

Prints accuracy, output/compute tokens and wall time side by side, and the ratios to vanilla.
"""

from __future__ import annotations

import argparse
import sys

from reasonexit.bench import add_bench_args, open_bench, run_config


def main() -> int:
    """Run the comparison and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_args(ap)
    ap.add_argument("--budgets", default="64,128,256")
    args = ap.parse_args()

    from reasonexit.methods import make_method
    from reasonexit.report import markdown_table

    session, jobs, decoding = open_bench(args)
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
