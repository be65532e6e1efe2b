"""Report on a bundled testbed model, run through the project's vLLM engine.

    python scripts/testbed_report.py --limit 300
    python scripts/testbed_report.py --hard --limit 300

Without ``--hard``, for the quick testbed (``tiny_reasoner``):

Greedy decoding on held-out synthetic test problems. Prints whether outputs are well-formed
(thinking closed and a boxed answer), accuracy overall and per difficulty, how much the traces
overthink (re-check passages after the model first states its final answer, and the share of
thinking tokens after that point), mean thinking and answer tokens, and decode throughput.

With ``--hard``, for the hard testbed (``tiny_reasoner_hard``, on ``synthetic_hard`` test
problems): one table of its properties against their targets (full-thinking accuracy, well-formed
outputs, the DEER threshold sweep's accuracy and token spread, first-transition exits at 0.95,
probes per problem at 0.99, AUROC of trial-answer confidence against correctness, one sample vs a
majority of 8 at T=0.6, decode throughput against the quick testbed's in the same run, training
time), then the baselines measured on it. Exits 1 if a property misses its target.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path


def main() -> int:
    """Run the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled testbed)")
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0, help="synthetic test-set seed")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--hard", action="store_true", help="report on the hard testbed against its targets")
    ap.add_argument("--plot", default=None, help="--hard: also plot accuracy against tokens of every run here")
    args = ap.parse_args()
    if args.hard:
        return hard_report(args)

    from reasonexit.data.datasets import load_problems
    from reasonexit.data.synthetic import count_rechecks, first_answer_position
    from reasonexit.engine import DEFAULT_MODEL, EngineConfig, get_session
    from reasonexit.methods import make_method
    from reasonexit.methods.base import Decoding
    from reasonexit.runs.runner import jobs_for, solve_all

    model = args.model or DEFAULT_MODEL
    session = get_session(EngineConfig(model=model, dtype=args.dtype, max_model_len=2048))
    problems = load_problems("synthetic", limit=args.limit, synthetic_seed=args.seed)
    jobs = jobs_for(session, problems)
    session.start()
    start = time.perf_counter()
    results = session.run(solve_all(session, make_method("vanilla"), jobs, Decoding(max_tokens=args.max_tokens)))
    wall = time.perf_counter() - start

    n = len(results)
    well_formed = sum(r.closed_thinking and r.answer is not None for r in results)
    by_diff: dict[int, list[bool]] = defaultdict(list)
    rechecked = 0
    after_fracs: list[float] = []
    for prob, r in zip(problems, results, strict=True):
        by_diff[int(prob.meta.get("difficulty", 0))].append(bool(r.correct))
        if r.answer is None or r.thinking_tokens == 0:
            continue
        pos = first_answer_position(r.thinking, r.answer)
        if pos is None:
            after_fracs.append(0.0)
            continue
        rechecked += count_rechecks(r.thinking, pos) > 0
        # thinking tokens up to the char offset: the decoded prefix length grows with the token
        # count, so a binary search finds the first token that reaches past it
        ids = r.token_ids[: r.thinking_tokens]
        lo, hi = 0, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(session.decode(ids[: mid + 1])) > pos:
                hi = mid
            else:
                lo = mid + 1
        before = lo
        after_fracs.append((len(ids) - before) / len(ids))

    acc = 100 * sum(bool(r.correct) for r in results) / n
    out_tokens = sum(r.output_tokens for r in results)
    print(f"\ntestbed report: {model}\n{n} held-out synthetic test problems, greedy, max_tokens={args.max_tokens}\n")
    print(f"well-formed (thinking closed + boxed answer): {100 * well_formed / n:.1f}%   (target >= 95%)")
    print(f"accuracy: {acc:.1f}%   (target 50-95%)")
    for d in sorted(by_diff):
        v = by_diff[d]
        print(f"  difficulty {d}: {100 * sum(v) / len(v):.1f}% of {len(v)}")
    print(f"traces with a re-check after the answer is first reached: {100 * rechecked / n:.1f}%   (target >= 60%)")
    mean_after = 100 * sum(after_fracs) / max(len(after_fracs), 1)
    print(f"mean share of thinking tokens after that point: {mean_after:.1f}%   (target >= 35%)")
    print(f"mean thinking tokens: {sum(r.thinking_tokens for r in results) / n:.1f}")
    print(f"mean answer tokens: {sum(r.answer_tokens for r in results) / n:.1f}")
    print(f"decode throughput: {out_tokens / wall:.0f} output tokens/s ({out_tokens} tokens in {wall:.1f}s)")
    session.close()
    return 0


# ------------------------------------------------------------------------------------------------
# --hard: the properties of the hard testbed, and the baselines measured on it
# ------------------------------------------------------------------------------------------------

DEER_SWEEP = (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)
BUDGETS = (96, 192)


def auroc(scores: list[float], labels: list[bool]) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return float("nan")
    ranked = sorted(neg)
    total = 0.0
    for s in pos:
        below = bisect.bisect_left(ranked, s)
        ties = bisect.bisect_right(ranked, s) - below
        total += below + 0.5 * ties
    return total / (len(pos) * len(neg))


def deer_stats(rows: list[dict]) -> dict[str, float]:
    """Exits at the first transition, probes per problem, and every probe's (confidence, right)."""
    first = 0
    probes = []
    points: list[tuple[float, bool]] = []
    for r in rows:
        recs = r["info"].get("probes", [])
        probes.append(len(recs))
        if recs and recs[0].get("exit"):
            first += 1
        gold = str(r["gold"]).strip()
        points += [(float(p["confidence"]), str(p["answer"]).strip() == gold) for p in recs]
    return {
        "first_exit": 100 * first / len(rows),
        "median_probes": statistics.median(probes),
        "mean_probes": statistics.fmean(probes),
        "points": points,
    }


def hard_report(args: argparse.Namespace) -> int:
    """Measure the hard testbed against its targets; print one table and the baselines."""
    from reasonexit.data.datasets import load_problems
    from reasonexit.engine import DEFAULT_MODEL, HARD_MODEL, EngineConfig, get_session
    from reasonexit.methods import make_method
    from reasonexit.methods.base import Decoding
    from reasonexit.runs.bench import run_config, warm_up
    from reasonexit.runs.runner import jobs_for

    model = args.model or HARD_MODEL
    greedy = Decoding(max_tokens=args.max_tokens, seed=0)
    rows: list[tuple[str, str, str, bool | None]] = []  # property, measured, target, within

    # Throughput of the quick testbed first, on its own engine, then the hard one: same machine, same run.
    tiny = get_session(EngineConfig(model=DEFAULT_MODEL, dtype=args.dtype, max_model_len=2048))
    tiny_jobs = jobs_for(tiny, load_problems("synthetic", limit=args.limit, synthetic_seed=args.seed))
    tiny.start()
    warm_up(tiny, tiny_jobs, greedy)
    tiny_run = run_config(tiny, "vanilla-tiny", make_method("vanilla"), tiny_jobs, greedy)
    tiny.close()

    session = get_session(EngineConfig(model=model, dtype=args.dtype, max_model_len=2048))
    problems = load_problems("synthetic_hard", limit=args.limit, synthetic_seed=args.seed)
    jobs = jobs_for(session, problems)
    session.start()
    warm_up(session, jobs, greedy, [make_method("deer", {"threshold": 0.95})])
    summaries = []

    def run(label: str, name: str, opts: dict | None = None, decoding: Decoding = greedy):
        print(f"[run] {label}", file=sys.stderr, flush=True)
        res = run_config(session, label, make_method(name, opts or {}), jobs, decoding)
        summaries.append(res.summary)
        return res

    van = run("vanilla", "vanilla")
    n = len(van.rows)
    well = sum(bool(r["closed_thinking"]) and r["answer"] is not None for r in van.rows)
    acc = van.summary["accuracy"]
    rows.append(("greedy accuracy, full thinking", f"{acc:.1f}%", "55-85%", 55 <= acc <= 85))
    rows.append(("well-formed (thinking closed, boxed answer)", f"{100 * well / n:.1f}%", ">= 95%", well >= 0.95 * n))

    sweep = {t: run(f"deer-{t}", "deer", {"threshold": t}) for t in DEER_SWEEP}
    accs = [sweep[t].summary["accuracy"] for t in DEER_SWEEP]
    toks = [sweep[t].summary["output_tokens"] for t in DEER_SWEEP]
    noise = 100 * 2 * math.sqrt(0.25 / n)  # two standard errors of an accuracy near 50%
    rising = all(b >= a - noise for a, b in zip(accs, accs[1:], strict=False))
    spread = max(accs) - min(accs)
    tok_spread = (max(toks) - min(toks)) / max(toks)
    rows.append(
        (
            "DEER sweep 0.5/0.8/0.9/0.95/0.99/0.999: accuracy",
            " / ".join(f"{a:.1f}" for a in accs) + f" (spread {spread:.1f} points)",
            f"rises within noise ({noise:.1f}), spread >= 8 points",
            rising and spread >= 8,
        )
    )
    rows.append(
        (
            "DEER sweep: output tokens",
            " / ".join(f"{t:.0f}" for t in toks) + f" (spread {100 * tok_spread:.0f}%)",
            "spread >= 25%",
            tok_spread >= 0.25,
        )
    )
    s95, s99, s999 = deer_stats(sweep[0.95].rows), deer_stats(sweep[0.99].rows), deer_stats(sweep[0.999].rows)
    rows.append(
        (
            "DEER 0.95: problems exiting at the first transition",
            f"{s95['first_exit']:.1f}%",
            "<= 60%",
            s95["first_exit"] <= 60,
        )
    )
    rows.append(
        (
            "DEER 0.99: probes per problem (median; mean)",
            f"{s99['median_probes']:g}; {s99['mean_probes']:.2f}",
            ">= 3",
            s99["median_probes"] >= 3,
        )
    )
    scores = [c for c, _ in s999["points"]]
    labels = [y for _, y in s999["points"]]
    auc = auroc(scores, labels)
    rows.append(
        (
            "trial-answer confidence vs its correctness (AUROC)",
            f"{auc:.3f} over {len(scores)} probes of DEER 0.999 ({100 * sum(labels) / max(len(labels), 1):.0f}% right)",
            "0.65-0.92",
            0.65 <= auc <= 0.92,
        )
    )

    maj = run("majority-8", "majority", {"n": 8, "sample_temperature": 0.6})
    branch_right = [bool(b.get("correct")) for r in maj.rows for b in r["info"].get("branches", [])]
    single = 100 * sum(branch_right) / max(len(branch_right), 1)
    maj_acc = maj.summary["accuracy"]
    rows.append(
        (
            "single sample at T=0.6 vs majority of 8",
            f"{single:.1f}% (mean of {len(branch_right)} samples) vs {maj_acc:.1f}%",
            "majority higher by >= 5 points",
            maj_acc - single >= 5,
        )
    )

    for b in BUDGETS:
        run(f"budget-{b}", "budget", {"max_thinking_tokens": b})
    run("flashthink", "flashthink")
    run("ffs", "ffs")

    ratio = van.summary["output_tok_per_s"] / tiny_run.summary["output_tok_per_s"]
    rows.append(
        (
            "decode throughput (vanilla, all in flight)",
            f"{van.summary['output_tok_per_s']:.0f} tok/s = {100 * ratio:.0f}% of the quick testbed's "
            f"{tiny_run.summary['output_tok_per_s']:.0f}",
            ">= 50%",
            ratio >= 0.5,
        )
    )
    info_path = Path(model) / "training_info.json"
    if info_path.is_file():
        meta = json.loads(info_path.read_text())
        minutes = float(meta.get("train_minutes", float("nan")))
        rows.append(
            (
                "training (training_info.json)",
                f"{minutes:.1f} min, {meta.get('steps_done')} steps, {meta.get('threads')} threads: "
                f"`{meta.get('command')}`",
                "one command, <= 60 min on 2 cores",
                minutes <= 60,
            )
        )
    session.close()

    print(f"\nhard testbed report: {model}")
    print(f"{n} held-out synthetic_hard test problems (seed {args.seed}), max_tokens={args.max_tokens}\n")
    print("| property | measured | target | within |\n| --- | --- | --- | --- |")
    for prop, measured, target, ok in rows:
        print(f"| {prop} | {measured} | {target} | {'yes' if ok else 'NO'} |")
    print(
        "\nper difficulty (vanilla, greedy): "
        + ", ".join(
            f"{d}: {100 * statistics.fmean(v):.1f}% of {len(v)}"
            for d, v in sorted(_by_difficulty(problems, van.rows).items())
        )
    )
    print("\nbaselines (greedy unless sampled; all problems in flight):\n")
    from reasonexit.runs.report import markdown_table

    print(markdown_table(summaries))
    if args.plot:
        from reasonexit.runs.report import plot_accuracy_vs_tokens

        title = f"hard testbed, {n} synthetic_hard test problems"
        print(f"\nplot: {plot_accuracy_vs_tokens(summaries, args.plot, title=title)}")
    return 0 if all(ok for *_, ok in rows) else 1


def _by_difficulty(problems: list, rows: list[dict]) -> dict[int, list[bool]]:
    out: dict[int, list[bool]] = defaultdict(list)
    for prob, r in zip(problems, rows, strict=True):
        out[int(prob.meta.get("difficulty", 0))].append(bool(r["correct"]))
    return out


if __name__ == "__main__":
    sys.exit(main())
