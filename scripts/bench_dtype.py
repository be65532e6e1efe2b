"""The bundled testbed in float32 against bfloat16 (or any dtypes), in one run: one engine per dtype in turn.

    python scripts/bench_dtype.py --limit 128 --dtypes float32,bfloat16,float32 --thresholds 0.95,0.99

On GPU, vLLM's ``dtype auto`` downcasts a float32 checkpoint to bfloat16, while reasonexit keeps
it float32 on CPU; this measures what that changes. For each dtype in ``--dtypes`` an engine is
started (the same settings as every benchmark here, only the dtype differs), warmed up untimed,
and runs vanilla and DEER at each threshold over the same problems, all in flight, greedy. The
previous engine is closed before the next starts. A dtype named twice (``float32,bfloat16,float32``)
runs again on a fresh engine, as a control: what differs between two engines of the same dtype is
not the dtype's doing.

Prints the dtype vLLM actually ran (its model config's, not what was asked for), one table of all
runs (accuracy, tokens, wall time), and the agreement of every later dtype with the first, per
problem: identical completion text, same answer, same correctness, and for DEER the same exit
position (thinking tokens kept) and the same exit position and answer together.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from reasonexit.methods.base import Method
from reasonexit.runs.bench import BenchRun, add_bench_args, open_bench, run_config


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def agreement(label: str, ref: BenchRun, other: BenchRun, early_exit: bool) -> dict[str, Any]:
    """Per-problem agreement of two runs of one configuration (rows matched by problem id).

    Counts problems with identical completion text, the same extracted answer, the same
    correctness, and (``early_exit``) the same exit position and the same exit position and answer.
    Where the exit position differs, ``exit_moved_same_trace/other_trace`` splits the problems into
    those whose kept thinking agrees up to the earlier exit (the exit decision differed on the same
    trace) and those whose traces had already diverged (the decision was made on different text);
    ``flips`` is ``right->wrong/wrong->right`` going from ``ref`` to ``other``.
    """
    by_id = {r["id"]: r for r in other.rows}
    pairs = [(a, by_id[a["id"]]) for a in ref.rows]
    n = len(pairs)

    def count(pred: Any) -> str:
        return f"{sum(bool(pred(a, b)) for a, b in pairs)}/{n}"

    def pos(r: dict[str, Any]) -> Any:
        return (r.get("info") or {}).get("exit_pos")

    def same_trace(a: dict[str, Any], b: dict[str, Any]) -> bool:
        # one kept thinking is the start of the other: the traces agree up to the earlier exit
        x, y = sorted((a["thinking"], b["thinking"]), key=len)
        return y.startswith(x)

    moved = [(a, b) for a, b in pairs if pos(a) != pos(b)]
    lost = sum(bool(a["correct"]) and not b["correct"] for a, b in pairs)
    gained = sum(not a["correct"] and bool(b["correct"]) for a, b in pairs)
    return {
        "config": label,
        "dtypes": f"{ref.label.split('/')[0]} vs {other.label.split('/')[0]}",
        "same_text": count(lambda a, b: a["text"] == b["text"]),
        "same_answer": count(lambda a, b: a["answer"] == b["answer"]),
        "same_correct": count(lambda a, b: bool(a["correct"]) == bool(b["correct"])),
        "flips": f"{lost}/{gained}",
        "same_exit_pos": count(lambda a, b: pos(a) == pos(b)) if early_exit else "-",
        "same_exit_pos_and_answer": (
            count(lambda a, b: pos(a) == pos(b) and a["answer"] == b["answer"]) if early_exit else "-"
        ),
        "exit_moved_same_trace/other_trace": (
            f"{sum(same_trace(a, b) for a, b in moved)}/{sum(not same_trace(a, b) for a, b in moved)}"
            if early_exit
            else "-"
        ),
        "exits": f"{sum(pos(a) is not None for a, _ in pairs)}/{sum(pos(b) is not None for _, b in pairs)}"
        if early_exit
        else "-",
    }


def main() -> int:
    """Run every configuration in every dtype and print the table and the agreement figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_args(ap, limit=128)
    ap.add_argument(
        "--dtypes",
        default="float32,bfloat16",
        help="comma-separated; the first is the reference; a repeated dtype runs again on a new engine (a control)",
    )
    ap.add_argument("--thresholds", default="0.95,0.99", help="DEER thresholds (0.95 is DEER's default)")
    ap.add_argument(
        "--paragraph-thresholds",
        default="0.95",
        help="DEER thresholds with probes at paragraph breaks too (probes mid-derivation; empty: none)",
    )
    args = ap.parse_args()
    asked = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    # A dtype given twice gets a second engine of its own ("float32#2"): the control for how much
    # of the disagreement a fresh engine of the same dtype shows.
    dtypes = [d if asked[:i].count(d) == 0 else f"{d}#{asked[:i].count(d) + 1}" for i, d in enumerate(asked)]

    from reasonexit.engine import close_all_sessions
    from reasonexit.methods import make_method
    from reasonexit.runs.report import markdown_table

    configs: list[tuple[str, dict[str, Any] | None]] = [("vanilla", None)]
    configs += [(f"deer-{t}", {"threshold": t}) for t in _floats(args.thresholds)]
    configs += [
        (f"deer-para-{t}", {"threshold": t, "paragraph_breaks": True}) for t in _floats(args.paragraph_thresholds)
    ]

    def method(opts: dict[str, Any] | None) -> Method:
        return make_method("vanilla") if opts is None else make_method("deer", opts)

    runs: dict[str, dict[str, BenchRun]] = {}
    starts: list[str] = []
    n_jobs = 0
    for dtype in dtypes:
        args.dtype = dtype.split("#")[0]
        t0 = time.perf_counter()
        session, jobs, dec = open_bench(args, warm_methods=[method(o) for _, o in configs])
        ran = str(session.engine.model_config.dtype).removeprefix("torch.")
        starts.append(f"{dtype}: vLLM ran {ran}; engine start and warm-up {time.perf_counter() - t0:.1f}s")
        runs[dtype] = {label: run_config(session, f"{dtype}/{label}", method(o), jobs, dec) for label, o in configs}
        n_jobs = len(jobs)
        close_all_sessions()

    print(f"\n{n_jobs} problems of {args.dataset}, greedy, all in flight, max_tokens={args.max_tokens}")
    print("\n".join(["", *starts, ""]))
    print(markdown_table([runs[d][label].summary for label, _ in configs for d in dtypes]))
    ref = dtypes[0]
    agree = [
        agreement(label, runs[ref][label], runs[d][label], opts is not None)
        for label, opts in configs
        for d in dtypes[1:]
    ]
    if agree:
        print(
            f"\nagreement per problem with {ref} (flips: right->wrong/wrong->right; exits: with an exit, {ref}/other)\n"
        )
        print(markdown_table(agree))
    return 0


if __name__ == "__main__":
    sys.exit(main())
