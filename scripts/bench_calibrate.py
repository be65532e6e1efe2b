"""Calibrated DEER thresholds and their held-out loss: the figures of `reasonexit calibrate`.

    python scripts/bench_calibrate.py --limit 300 --out runs/bench-calibrate

Runs vanilla and DEER at every grid threshold on ``--limit`` validation and ``--limit`` test
problems (run files in ``--out``, so a re-run resumes), then:

1. calibrates on all validation problems (Learn then Test, ``--max-loss``, ``--delta``) and
   measures the chosen threshold on the test problems: loss against vanilla and tokens saved;
2. repeats the calibration on ``--repeats`` subsets of the validation problems drawn with
   replacement (seeded), each measured on the same test problems, and counts how often the
   realised test loss exceeds the bound (the guarantee allows it in a share ``delta`` of draws).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path


def main() -> int:
    """Run, calibrate, print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model (default: the bundled testbed)")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--grid", default="0.5,0.8,0.9,0.95,0.99,0.999")
    ap.add_argument("--max-loss", type=float, default=0.02)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--pvalue", choices=["binomial", "hb"], default="binomial")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--out", default="runs/bench-calibrate")
    args = ap.parse_args()

    from reasonexit.data.datasets import load_problems
    from reasonexit.engine import DEFAULT_MODEL, EngineConfig, get_session
    from reasonexit.methods import make_method
    from reasonexit.methods.base import Decoding
    from reasonexit.runs.calibrate import losses, ordered_grid, rows_by_problem, select
    from reasonexit.runs.sweep import Setting, run_sweep

    session = get_session(EngineConfig(model=args.model or DEFAULT_MODEL, dtype="float32", max_model_len=2048))
    values = ordered_grid(args.grid.split(","), "high")
    settings = [Setting("vanilla", {}, baseline=True)] + [Setting("deer", {"threshold": v}) for v in values]
    decoding = Decoding(max_tokens=args.max_tokens)
    correct: dict[str, dict[str, list[bool]]] = {}
    tokens: dict[str, dict[str, list[int]]] = {}
    for split in ("validation", "test"):
        problems = load_problems(args.dataset, limit=args.limit, split=split)
        methods = [make_method(s.method, s.options) for s in settings]
        out = Path(args.out) / split
        run_sweep(settings, methods, problems, args.dataset, session, decoding, out, progress=False,
                  log=lambda line: print(line, file=sys.stderr, flush=True))  # fmt: skip
        by = {s.label: rows_by_problem(out / f"{s.label}.jsonl", problems) for s in settings}
        ids = [p.id for p in problems]
        correct[split] = {k: [bool(rows[i]["correct"]) for i in ids] for k, rows in by.items()}
        tokens[split] = {k: [int(rows[i]["output_tokens"]) for i in ids] for k, rows in by.items()}
    session.close()

    labels = [s.label for s in settings[1:]]

    def pick(idx: list[int]) -> tuple[int | None, list[float]]:
        val = correct["validation"]
        ref = [val["vanilla"][i] for i in idx]
        per = [[val[label][i] for i in idx] for label in labels]
        toks = [sum(tokens["validation"][label][i] for i in idx) / len(idx) for label in labels]
        cal = select(values, ref, per, toks, 0.0, args.max_loss, args.delta, args.pvalue)
        return cal.chosen, cal.pvalues

    def on_test(k: int) -> tuple[float, float]:
        test = correct["test"]
        loss = sum(losses(test["vanilla"], test[labels[k]])) / len(test["vanilla"])
        van = sum(tokens["test"]["vanilla"]) / len(tokens["test"]["vanilla"])
        saved = 1 - sum(tokens["test"][labels[k]]) / len(tokens["test"][labels[k]]) / van
        return loss, saved

    n = len(correct["validation"]["vanilla"])
    model = args.model or "the bundled testbed (tiny_reasoner)"
    n_test = len(correct["test"]["vanilla"])
    print(f"\nDEER thresholds calibrated on {model}, {args.dataset}: {n} validation problems, "
          f"{n_test} test problems; max loss {args.max_loss}, delta {args.delta}, "
          f"{args.pvalue} p-values\n")  # fmt: skip
    print("| threshold | validation accuracy | validation loss vs vanilla | test accuracy | test loss vs vanilla |"
          " test output tokens |\n| --- | --- | --- | --- | --- | --- |")  # fmt: skip
    val, test = correct["validation"], correct["test"]
    for v, label in [("vanilla", "vanilla")] + list(zip(values, labels, strict=True)):
        vl = sum(losses(val["vanilla"], val[label])) / n
        tl = sum(losses(test["vanilla"], test[label])) / len(test[label])
        test_acc = 100 * sum(test[label]) / n_test
        print(f"| {v} | {100 * sum(val[label]) / n:.1f}% | {100 * vl:.2f} | {test_acc:.1f}%"
              f" | {100 * tl:.2f} | {sum(tokens['test'][label]) / n_test:.1f} |")  # fmt: skip

    chosen, pvals = pick(list(range(n)))
    print("\nfull validation set: p-values " + ", ".join(f"{v}: {p:.3g}" for v, p in zip(values, pvals, strict=True)))
    if chosen is None:
        print("no threshold qualifies on the full validation set")
    else:
        loss, saved = on_test(chosen)
        print(f"chosen threshold {values[chosen]}: test loss {100 * loss:.2f} points (bound {100 * args.max_loss:g}), "
              f"output tokens {100 * saved:.1f}% below vanilla")  # fmt: skip

    rng = random.Random(0)
    exceed = 0
    print(f"\n{args.repeats} calibration sets drawn from the validation problems with replacement:\n")
    print("| draw | chosen threshold | test loss (points) | output tokens saved |\n| --- | --- | --- | --- |")
    for r in range(args.repeats):
        idx = [rng.randrange(n) for _ in range(n)]
        k, _ = pick(idx)
        if k is None:
            print(f"| {r + 1} | none | - | - |")
            continue
        loss, saved = on_test(k)
        exceed += loss > args.max_loss
        print(f"| {r + 1} | {values[k]} | {100 * loss:.2f} | {100 * saved:.1f}% |")
    print(f"\nrealised test loss above {100 * args.max_loss:g} points in {exceed} of {args.repeats} draws "
          f"(the guarantee allows a share of {args.delta:g})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
