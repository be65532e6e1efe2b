"""Vanilla vs hard thinking budgets on the synthetic set, in one run on one engine.

    python scripts/bench_baselines.py --limit 300 --budgets 64,128,256

Each budget runs twice: with vLLM's own per-request ``thinking_token_budget`` (``budget-N``, the
method's default) and with reasonexit's per-step rule (``budget-N-reasonexit``: the end marker plus
a forced lead-in). Prints accuracy, output/compute tokens and wall time side by side, and the
ratios to vanilla.
"""

from __future__ import annotations

import argparse
import sys

from reasonexit.runs.bench import add_bench_args, open_bench, run_config


def main() -> int:
    """Run the comparison and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_args(ap)
    ap.add_argument("--budgets", default="64,128,256")
    args = ap.parse_args()

    from reasonexit.methods import make_method
    from reasonexit.runs.report import markdown_table

    # Build every method before the engine starts, so it registers the per-step rules they need.
    configs = [("vanilla", make_method("vanilla"))]
    for b in [int(x) for x in args.budgets.split(",") if x]:
        configs.append((f"budget-{b}", make_method("budget", {"max_thinking_tokens": b})))
        own = make_method("budget", {"max_thinking_tokens": b, "impl": "reasonexit"})
        configs.append((f"budget-{b}-reasonexit", own))
    session, jobs, decoding = open_bench(args, warm_methods=[m for _, m in configs[1:3]])
    runs = [run_config(session, label, method, jobs, decoding) for label, method in configs]
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
