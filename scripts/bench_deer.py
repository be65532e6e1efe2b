"""DEER vs vanilla on the bundled testbed, in one run on one engine, all problems in flight.

    python scripts/bench_deer.py --limit 300 --sweep 0.8,0.9,0.95,0.99 --plot deer_sweep.png

Prints the side-by-side table, the issue's checks (output tokens at least 30% below vanilla with
accuracy at most 1 point lower; wall time within 1.2 x vanilla wall x compute/vanilla-output), the
branch-parallel vs sequential wall time, and the threshold sweep as a table and a plot.
"""

from __future__ import annotations

import argparse
import sys

from reasonexit.runs.bench import add_bench_args, open_bench, run_config


def main() -> int:
    """Run the benchmark and print its tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_args(ap)
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--confidence", default="mean")
    ap.add_argument("--transitions", default="Wait", help="comma-separated transition words")
    ap.add_argument("--paragraph-breaks", action="store_true", help="also probe at every paragraph break")
    ap.add_argument("--sweep", default="0.8,0.9,0.95,0.99")
    ap.add_argument("--plot", default="deer_sweep.png")
    args = ap.parse_args()

    from reasonexit.methods import make_method
    from reasonexit.runs.report import markdown_table, plot_accuracy_vs_tokens

    def deer(threshold: float, mode: str = "parallel"):
        opts = {
            "threshold": threshold,
            "confidence": args.confidence,
            "mode": mode,
            "transitions": tuple(w for w in args.transitions.split(",") if w),
            "paragraph_breaks": args.paragraph_breaks,
        }
        return make_method("deer", opts)

    session, jobs, dec = open_bench(args, warm_methods=[deer(args.threshold), deer(args.threshold, "sequential")])

    van = run_config(session, "vanilla", make_method("vanilla"), jobs, dec)
    par = run_config(session, f"deer-{args.threshold}", deer(args.threshold), jobs, dec)
    seq = run_config(session, f"deer-{args.threshold}-sequential", deer(args.threshold, "sequential"), jobs, dec)
    print(f"\n{len(jobs)} problems of {args.dataset}, greedy, all in flight, max_tokens={args.max_tokens}\n")
    print(markdown_table([van.summary, par.summary, seq.summary]))

    v, d = van.summary, par.summary
    out_cut = 1 - d["output_tokens"] / v["output_tokens"]
    acc_drop = v["accuracy"] - d["accuracy"]
    bound = v["wall_s"] * (d["compute_tokens"] / v["output_tokens"]) * 1.2
    print("\nchecks:")
    print(
        f"  output tokens {100 * out_cut:.1f}% below vanilla (target >= 30%): {'PASS' if out_cut >= 0.30 else 'FAIL'}"
    )
    print(f"  accuracy {acc_drop:+.1f} points below vanilla (target <= 1): {'PASS' if acc_drop <= 1.0 else 'FAIL'}")
    verdict = "PASS" if d["wall_s"] <= bound else "FAIL"
    print(
        f"  wall {d['wall_s']:.1f}s vs bound vanilla {v['wall_s']:.1f}s x compute/vanilla-output "
        f"{d['compute_tokens'] / v['output_tokens']:.2f} x 1.2 = {bound:.1f}s: {verdict}"
    )
    print(
        f"  branch-parallel wall {d['wall_s']:.1f}s vs sequential {seq.summary['wall_s']:.1f}s "
        f"(x{seq.summary['wall_s'] / d['wall_s']:.2f})"
    )
    same = sum(
        a["info"].get("exit_pos") == b["info"].get("exit_pos") and a["answer"] == b["answer"]
        for a, b in zip(par.rows, seq.rows, strict=True)
    )
    print(f"  parallel and sequential agree on exit position and answer: {same}/{len(jobs)}")

    sweep = [van.summary]
    for t in [float(x) for x in args.sweep.split(",") if x]:
        sweep.append(
            par.summary if t == args.threshold else run_config(session, f"deer-{t}", deer(t), jobs, dec).summary
        )
    print("\nthreshold sweep:\n")
    print(markdown_table(sweep))
    if args.plot:
        print(f"\nplot: {plot_accuracy_vs_tokens(sweep, args.plot, title='DEER threshold sweep')}")
    session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
