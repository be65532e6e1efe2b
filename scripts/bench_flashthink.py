"""FlashThink vs vanilla and DEER on the bundled testbed, in one run on one engine, all problems in flight.

    python scripts/bench_flashthink.py --limit 128 --sweep 0.5,0.7,0.9,0.95 --deer-sweep 0.8,0.9,0.95,0.99 \\
        --plot flashthink_sweep.png

Prints side by side: vanilla, ``deer``, ``flashthink`` with the ``self`` verifier and with the
trained verifier (accuracy, output tokens, compute tokens, verifier tokens, wall time); the
issue's checks for the trained verifier (output tokens at least 40% below vanilla with accuracy at
most 1 point lower; wall time within 1.2 x vanilla wall x compute/vanilla-output); the trained
verifier's wall time in the sequential and branch-parallel modes; and a threshold sweep of
FlashThink (trained) next to DEER's, as a table and an accuracy-vs-tokens plot.
"""

from __future__ import annotations

import argparse
import sys

from reasonexit.runs.bench import add_bench_args, open_bench, run_config


def main() -> int:
    """Run the benchmark and print its tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_args(ap, limit=128)
    ap.add_argument("--threshold", type=float, default=0.9, help="FlashThink threshold (both verifiers)")
    ap.add_argument("--deer-threshold", type=float, default=0.95)
    ap.add_argument("--verifier-model", default=None, help="trained verifier (default: the testbed's)")
    ap.add_argument("--sweep", default="0.5,0.7,0.9,0.95", help="FlashThink (trained) thresholds")
    ap.add_argument("--deer-sweep", default="0.8,0.9,0.95,0.99")
    ap.add_argument("--plot", default="flashthink_sweep.png")
    args = ap.parse_args()

    from reasonexit.methods import make_method
    from reasonexit.runs.report import markdown_table, plot_accuracy_vs_tokens

    def flash(verifier: str, threshold: float, mode: str = "auto"):
        opts = {"verifier": verifier, "threshold": threshold, "mode": mode}
        if verifier == "trained" and args.verifier_model:
            opts["verifier_model"] = args.verifier_model
        return make_method("flashthink", opts)

    def deer(threshold: float):
        return make_method("deer", {"threshold": threshold})

    warm = [deer(args.deer_threshold), flash("self", args.threshold), flash("trained", args.threshold)]
    session, jobs, dec = open_bench(args, warm_methods=warm)

    # The verifier engine's first pass over all problems meets its batch shapes for the first time
    # (measured 2x slower than later passes); like every engine here it is warmed untimed, and the
    # cold pass is printed.
    cold = run_config(session, "flashthink-trained-cold", flash("trained", args.threshold), jobs, dec)
    van = run_config(session, "vanilla", make_method("vanilla"), jobs, dec)
    d = run_config(session, f"deer-{args.deer_threshold}", deer(args.deer_threshold), jobs, dec)
    fs = run_config(session, f"flashthink-self-{args.threshold}", flash("self", args.threshold), jobs, dec)
    ft = run_config(session, f"flashthink-trained-{args.threshold}", flash("trained", args.threshold), jobs, dec)
    modes = {}
    for mode in ("sequential", "parallel"):
        modes[mode] = run_config(
            session, f"flashthink-trained-{args.threshold}-{mode}", flash("trained", args.threshold, mode), jobs, dec
        )
    print(f"\n{len(jobs)} problems of {args.dataset}, greedy, all in flight, max_tokens={args.max_tokens}\n")
    print(markdown_table([van.summary, d.summary, fs.summary, ft.summary]))

    v, t = van.summary, ft.summary
    out_cut = 1 - t["output_tokens"] / v["output_tokens"]
    acc_drop = v["accuracy"] - t["accuracy"]
    bound = v["wall_s"] * (t["compute_tokens"] / v["output_tokens"]) * 1.2
    print("\nchecks (flashthink, trained verifier):")
    print(
        f"  output tokens {100 * out_cut:.1f}% below vanilla (target >= 40%): {'PASS' if out_cut >= 0.40 else 'FAIL'}"
    )
    print(f"  accuracy {acc_drop:+.1f} points below vanilla (target <= 1): {'PASS' if acc_drop <= 1.0 else 'FAIL'}")
    print(
        f"  wall {t['wall_s']:.1f}s vs bound vanilla {v['wall_s']:.1f}s x compute/vanilla-output "
        f"{t['compute_tokens'] / v['output_tokens']:.2f} x 1.2 = {bound:.1f}s: "
        f"{'PASS' if t['wall_s'] <= bound else 'FAIL'}"
    )
    print(f"  (untimed warm-up: the verifier engine's first pass took {cold.summary['wall_s']:.1f}s)")
    seq, par = modes["sequential"].summary, modes["parallel"].summary
    print(
        f"  sequential wall {seq['wall_s']:.1f}s vs branch-parallel {par['wall_s']:.1f}s "
        f"(auto picked {ft.rows[0]['info'].get('mode')})"
    )
    same = sum(
        a["info"].get("exit_pos") == b["info"].get("exit_pos") and a["answer"] == b["answer"]
        for a, b in zip(modes["sequential"].rows, modes["parallel"].rows, strict=True)
    )
    print(f"  sequential and parallel agree on exit position and answer: {same}/{len(jobs)}")

    sweep = [van.summary]
    for th in [float(x) for x in args.sweep.split(",") if x]:
        run = (
            ft
            if th == args.threshold
            else run_config(session, f"flashthink-trained-{th}", flash("trained", th), jobs, dec)
        )
        sweep.append(run.summary)
    for th in [float(x) for x in args.deer_sweep.split(",") if x]:
        run = d if th == args.deer_threshold else run_config(session, f"deer-{th}", deer(th), jobs, dec)
        sweep.append(run.summary)
    print("\nthreshold sweep (flashthink trained, then deer):\n")
    print(markdown_table(sweep))
    if args.plot:
        print("\nplot: " + str(plot_accuracy_vs_tokens(sweep, args.plot, title="FlashThink (trained) and DEER sweeps")))
    session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
