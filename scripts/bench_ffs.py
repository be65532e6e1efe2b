"""First Finish Search vs its baselines on the bundled testbed, in one run on one engine.

    python scripts/bench_ffs.py --limit 128

Every configuration runs on the same engine in this process, one after another, on the same
problems:

- batch case (all problems in flight): vanilla greedy, vanilla with one sample at the branches'
  temperature, ``ffs`` n=4 and n=8, ``ffs`` k=3 of n=8, ``majority`` n=8 (with pass@8), and
  ``ffs --inner deer`` when ``deer`` is registered: accuracy, output tokens, compute tokens, mean
  time-to-answer, wall time and throughput, side by side;
- interactive case (one problem in flight at a time, the two methods alternating problem by
  problem so a shared machine's load weighs on both alike): mean time-to-answer of ``ffs`` n=8 vs
  one vanilla sample, and compute tokens of ``ffs`` n=8 against n x the winner's length.

On CPU the engine runs without chunked prefill: vLLM's CPU worker cannot rewind the generator of a
seeded request whose prompt was split over steps.

Branches sample at ``--temperature``/``--top-p`` (0.6 / 0.95) with seeds derived from ``--seed``
and the problem; the one-sample vanilla row is branch 0 of every ``ffs`` run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

from reasonexit.engine import DEFAULT_MODEL  # noqa: E402
from reasonexit.runs.bench import add_bench_args, open_bench  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_args(ap, limit=128)
    ap.add_argument("--interactive-limit", type=int, default=None, help="problems of the interactive case (all)")
    ap.add_argument("--temperature", type=float, default=0.6, help="sampling temperature of every sample")
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--deer-n", type=int, default=4, help="branches of ffs --inner deer")
    ap.add_argument("--threshold", type=float, default=None, help="DEER threshold inside ffs (default: deer's)")
    ap.add_argument("--save", default=None, help="directory to write every configuration's rows (jsonl)")
    return ap.parse_args(argv)


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def _ffs_ratios(rows: list[dict[str, Any]]) -> list[float]:
    """Per problem: compute tokens / (n x the winner's length)."""
    out = []
    for r in rows:
        n = len(r["info"]["branches"])
        out.append(r["compute_tokens"] / (n * max(1, r["output_tokens"])))
    return out


def _table_row(run: Any) -> dict[str, Any]:
    """The summary of one configuration, with compute throughput and pass@n where it applies."""
    s = {("problems" if k == "n" else k): v for k, v in run.summary.items() if k != "params"}
    wall = run.wall_s
    s["compute_tok_per_s"] = round(sum(r["compute_tokens"] for r in run.rows) / wall, 1) if wall > 0 else float("nan")
    s["problems_per_s"] = round(len(run.rows) / wall, 3) if wall > 0 else float("nan")
    passes = [r["info"]["pass_at_n"] for r in run.rows if "pass_at_n" in r["info"]]
    s["pass@n"] = round(100.0 * _mean([float(p) for p in passes]), 2) if passes else ""
    return s


def interactive(session: Any, jobs: list, decoding: Any, configs: list[tuple[str, str, dict[str, Any]]]) -> dict:
    """One problem in flight at a time, the methods alternating problem by problem (and which goes
    first), so a shared machine's changing load weighs on all of them alike. Wall time = the sum of
    the problems' times to answer."""
    from reasonexit.methods import make_method
    from reasonexit.runs.bench import BenchRun
    from reasonexit.runs.report import summarize
    from reasonexit.runs.runner import solve_all

    methods = [(label, make_method(name, opts)) for label, name, opts in configs]
    rows: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in methods}
    for i, job in enumerate(jobs):
        for label, method in methods if i % 2 == 0 else methods[::-1]:
            (res,) = session.run(solve_all(session, method, [job], decoding, 1, indices=[i]))
            rows[label].append(res.to_row())
    out = {}
    for label, rs in rows.items():
        wall = sum(r["wall_s"] for r in rs)
        out[label] = BenchRun(label, rs, wall, summarize(rs, run=label, wall_s=wall))
    return out


def save_rows(save: Path | None, res: Any, case: str) -> None:
    """Write one configuration's rows to ``<save>/<label slug>-<case>.jsonl`` (nothing without ``--save``)."""
    if save is None:
        return
    slug = res.label.replace(" ", "_").replace("=", "").replace("--", "")
    with (save / f"{slug}-{case}.jsonl").open("w") as fh:
        for row in res.rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables and checks."""
    args = parse_args(argv)
    from reasonexit.methods import make_method, method_names
    from reasonexit.methods.base import Decoding
    from reasonexit.runs.bench import run_config
    from reasonexit.runs.report import markdown_table

    # The engine prefills whole prompts on CPU (vLLM's CPU worker cannot rewind the generator of a
    # seeded request whose prompt was split over steps), so seeded samples are safe here.
    session, jobs, greedy = open_bench(args, seed=args.seed)
    model = args.model or DEFAULT_MODEL
    sampled = Decoding(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed)

    configs: list[tuple[str, str, dict[str, Any], Decoding]] = [
        ("vanilla greedy", "vanilla", {}, greedy),
        ("vanilla 1 sample", "vanilla", {}, sampled),
        ("ffs n=4", "ffs", {"n": 4}, sampled),
        ("ffs n=8", "ffs", {"n": 8}, sampled),
        ("ffs k=3 of n=8", "ffs", {"n": 8, "k": 3}, sampled),
        ("majority n=8", "majority", {"n": 8}, sampled),
    ]
    skipped = None
    if "deer" in method_names():
        opts: dict[str, Any] = {"n": args.deer_n, "inner": "deer"}
        if args.threshold is not None:
            opts["threshold"] = args.threshold
        configs.append((f"ffs n={args.deer_n} --inner deer", "ffs", opts, sampled))
    else:
        skipped = "ffs --inner deer: skipped (method deer is not registered)"

    save = Path(args.save) if args.save else None
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)

    def run(label: str, name: str, opts: dict[str, Any], dec: Decoding):
        res = run_config(session, label, make_method(name, opts), jobs, dec, max_in_flight=len(jobs))
        print(
            f"  {label:<28} acc {res.summary['accuracy']:6.2f}  out {res.summary['output_tokens']:7.1f}  "
            f"compute {res.summary['compute_tokens']:8.1f}  wall {res.wall_s:7.1f}s",
            file=sys.stderr,
            flush=True,
        )
        save_rows(save, res, "batch")
        return res

    print(f"batch case: {len(jobs)} problems in flight", file=sys.stderr)
    batch = {label: run(label, name, opts, dec) for label, name, opts, dec in configs}

    ijobs = jobs[: args.interactive_limit]
    print(f"interactive case: {len(ijobs)} problems, one in flight, methods alternating", file=sys.stderr)
    inter = interactive(session, ijobs, sampled, [("vanilla 1 sample", "vanilla", {}), ("ffs n=8", "ffs", {"n": 8})])
    for res in inter.values():
        print(f"  {res.label:<28} time-to-answer {res.summary['latency_s']:.3f}s", file=sys.stderr)
        save_rows(save, res, "interactive")

    print(
        f"\n## FFS on {len(jobs)} problems of {args.dataset} ({Path(model).name}), one engine, one run\n\n"
        f"Sampling: temperature {args.temperature}, top-p {args.top_p}, seed {args.seed}, "
        f"max_tokens {args.max_tokens}.\n"
    )
    print(f"### Batch case: all {len(jobs)} problems in flight (throughput as measured)\n")
    print(markdown_table([_table_row(r) for r in batch.values()]))
    if skipped:
        print(f"\n{skipped}")

    print(f"\n### Interactive case: {len(ijobs)} problems, one in flight at a time (methods alternating)\n")
    print(markdown_table([_table_row(r) for r in inter.values()]))

    van_i, ffs_i = inter["vanilla 1 sample"].summary, inter["ffs n=8"].summary
    ratio_i = _ffs_ratios(inter["ffs n=8"].rows)
    ratio_b = _ffs_ratios(batch["ffs n=8"].rows)
    tta = ffs_i["latency_s"] / van_i["latency_s"]
    pairs = zip(inter["ffs n=8"].rows, inter["vanilla 1 sample"].rows, strict=True)
    paired = [f["wall_s"] / v["wall_s"] for f, v in pairs]
    faster = sum(x < 1 for x in paired)
    within = sum(x <= 1.1 for x in ratio_i)
    print("\n### Checks\n")
    verdict = "PASS" if ffs_i["latency_s"] <= van_i["latency_s"] else "FAIL"
    print(
        f"- interactive time-to-answer: ffs n=8 {ffs_i['latency_s']:.3f}s vs vanilla {van_i['latency_s']:.3f}s "
        f"(x{tta:.3f}; target <= x1.00): {verdict}; per problem: median x{statistics.median(paired):.3f}, "
        f"ffs faster on {faster}/{len(paired)}"
    )
    print(
        f"  (tokens to the answer: ffs n=8 {ffs_i['output_tokens']:.1f} vs vanilla {van_i['output_tokens']:.1f}; "
        f"time per token {1000 * ffs_i['latency_s'] / ffs_i['output_tokens']:.2f} ms with 8 sequences vs "
        f"{1000 * van_i['latency_s'] / van_i['output_tokens']:.2f} ms with 1)"
    )
    verdict = "PASS" if within == len(ratio_i) else "FAIL"
    print(
        f"- compute of ffs n=8 / (8 x winner's length), interactive: mean {_mean(ratio_i):.3f}, "
        f"max {max(ratio_i):.3f}, {within}/{len(ratio_i)} problems <= 1.1: {verdict}"
    )
    print(
        f"- the same ratio in the batch case (branches queue behind {len(jobs)} problems; as measured): "
        f"mean {_mean(ratio_b):.3f}, max {max(ratio_b):.3f}, "
        f"{sum(x <= 1.1 for x in ratio_b)}/{len(ratio_b)} <= 1.1"
    )
    acc = {label: r.summary["accuracy"] for label, r in batch.items()}
    for label in ("ffs n=4", "ffs n=8", "ffs k=3 of n=8"):
        print(
            f"- accuracy {label} {acc[label]:.2f}% vs vanilla 1 sample {acc['vanilla 1 sample']:.2f}% "
            f"({acc[label] - acc['vanilla 1 sample']:+.2f}), vs greedy {acc['vanilla greedy']:.2f}% "
            f"({acc[label] - acc['vanilla greedy']:+.2f}), vs majority n=8 {acc['majority n=8']:.2f}% "
            f"({acc[label] - acc['majority n=8']:+.2f})"
        )
    wins = [r["info"]["branches"][r["info"]["winner"]] for r in batch["ffs n=8"].rows]
    finished = sum(w["status"] == "finished" for w in wins)
    print(f"- ffs n=8 winners that finished (end of sequence after the answer): {finished}/{len(wins)}")
    session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
