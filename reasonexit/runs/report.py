"""Result tables and plots: summaries of run files with pandas, accuracy-vs-tokens plots with matplotlib."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UserError
from ..methods.base import ExitReason

SUMMARY_COLUMNS = [
    "run",
    "method",
    "params",
    "n",
    "errors",
    "accuracy",
    "output_tokens",
    "compute_tokens",
    "thinking_tokens",
    "latency_s",
]


#: Fields every result row has (checked so a foreign or damaged file gets one line, not a KeyError).
REQUIRED_FIELDS = ("id", "method", "output_tokens", "compute_tokens", "wall_s")


def summarize(
    rows: Sequence[dict[str, Any]],
    run: str = "",
    wall_s: float | None = None,
    timed_rows: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One summary row: accuracy (%), mean tokens, mean latency, errors; throughput when the wall
    time is known.

    Only the newest row of each problem counts (a problem re-run after an error has several).
    Error rows (``exit_reason == "error"``) are counted in ``n`` and ``errors`` and left out of
    accuracy and the means. Throughput divides the output tokens of ``timed_rows`` (the rows
    written during ``wall_s``, e.g. by one invocation of a resumed run; default: all rows) by
    ``wall_s``.
    """
    from .runfile import latest_rows

    rows = latest_rows(rows)
    name = run or "(unnamed)"
    if not rows:
        raise UserError(f"run {name} has no results")
    for n, r in enumerate(rows, start=1):
        missing = [f for f in REQUIRED_FIELDS if f not in r]
        if missing:
            raise UserError(
                f"run {name}: result {n} (id {r.get('id', '?')}) has no {', '.join(map(repr, missing))} "
                "field; is this a reasonexit run file?"
            )
    df = pd.DataFrame(rows)
    errors = df["exit_reason"].eq(ExitReason.ERROR.value) if "exit_reason" in df else pd.Series(False, index=df.index)
    ok = df[~errors]
    graded = ok["correct"].dropna() if "correct" in ok else pd.Series(dtype=float)

    def mean(col: str, digits: int) -> float:
        if col not in ok or ok[col].dropna().empty:
            return float("nan")
        return round(float(pd.to_numeric(ok[col], errors="coerce").mean()), digits)

    method = str(df["method"].iloc[0])
    out: dict[str, Any] = {
        "run": run,
        "method": method,
        "params": _short_params(df["params"].iloc[0] if "params" in df else "", method),
        "n": len(df),
        "errors": int(errors.sum()),
        "accuracy": round(100.0 * graded.astype(float).mean(), 2) if len(graded) else float("nan"),
        "output_tokens": mean("output_tokens", 1),
        "compute_tokens": mean("compute_tokens", 1),
        "thinking_tokens": mean("thinking_tokens", 1),
        "latency_s": mean("wall_s", 3),
    }
    if "problem_id" in ok and "sample" in ok and len(ok):
        out.update(sample_metrics(ok))
    # The verifier's (or probes') share of compute, for early-exit methods that record it.
    infos = df["info"] if "info" in df else pd.Series(dtype=object)
    if any(isinstance(i, dict) and "verifier_tokens" in i for i in infos):
        for key in ("verifier_tokens", "verifier_prompt_tokens", "verifier_wall_s"):
            vals = [float(i.get(key, 0) or 0) if isinstance(i, dict) else 0.0 for i in infos]
            out[key] = round(sum(vals) / len(vals), 3 if key == "verifier_wall_s" else 1)
    if wall_s is not None:
        timed = rows if timed_rows is None else list(timed_rows)
        tokens = sum(int(r.get("output_tokens") or 0) for r in timed)
        out["wall_s"] = round(wall_s, 2)
        out["output_tok_per_s"] = round(tokens / wall_s, 1) if wall_s > 0 and timed else float("nan")
    return out


def sample_metrics(df: pd.DataFrame) -> dict[str, Any]:
    """What model cards report for K samples per problem, from result rows with ``problem_id``.

    - ``pass@1``: the mean over problems of each problem's share of correct samples (%), with
      ``pass@1_se``, its standard error across problems;
    - ``cons@K``: majority vote over each problem's K answers, answers grouped by math-verify
      equivalence (ties go to the group whose first sample came first);
    - ``pass@K``: share of problems with at least one correct sample;
    - ``overlong``: share of samples that never closed their thinking (%).
    """
    import math

    from ..data.answers import grade

    per_problem, pass_k, cons = [], [], []
    k = 0
    for _, group in df.sort_values("sample").groupby("problem_id", sort=False):
        correct = group["correct"].fillna(False).astype(bool).tolist() if "correct" in group else []
        k = max(k, len(group))
        per_problem.append(sum(correct) / len(correct) if correct else 0.0)
        pass_k.append(any(correct))
        kind = str(group["kind"].iloc[0]) if "kind" in group else "math"
        clusters: list[list[int]] = []  # indices into the group's rows, grouped by equivalent answers
        answers = group["answer"].tolist() if "answer" in group else []
        for i, ans in enumerate(answers):
            if ans is None or ans == "":
                continue
            home = next((c for c in clusters if grade(str(ans), str(answers[c[0]]), kind)), None)
            if home is None:
                clusters.append([i])
            else:
                home.append(i)
        best = max(clusters, key=len, default=None)  # max keeps the first of equal-sized groups
        cons.append(bool(best) and bool(correct[best[0]]))
    n = len(per_problem)
    mean = sum(per_problem) / n
    se = math.sqrt(sum((p - mean) ** 2 for p in per_problem) / (n - 1) / n) if n > 1 else float("nan")
    closed = df["closed_thinking"].astype(bool) if "closed_thinking" in df else pd.Series(True, index=df.index)
    return {
        "samples": k,
        "pass@1": round(100 * mean, 2),
        "pass@1_se": round(100 * se, 2),
        f"cons@{k}": round(100 * sum(cons) / n, 2),
        f"pass@{k}": round(100 * sum(pass_k) / n, 2),
        "overlong": round(100 * float((~closed).mean()), 2),
    }


def _short_params(params: Any, method: str = "") -> str:
    """The parameters that differ from the method's defaults, as ``k=v`` pairs."""
    if not isinstance(params, dict) or not params:
        return params if isinstance(params, str) else ""
    defaults = _defaults(method)
    shown = {k: v for k, v in params.items() if k not in defaults or defaults[k] != v}
    if "inner_options" in params:  # a nested method: show it as inner=name(its own non-defaults)
        inner = str(params.get("inner", ""))
        shown.pop("inner_options", None)
        shown["inner"] = f"{inner}({_short_params(params['inner_options'], inner)})"
    return ", ".join(f"{k}={v!r}" if isinstance(v, str) and k != "inner" else f"{k}={v}" for k, v in shown.items())


def _defaults(method: str) -> dict[str, Any]:
    """A method's default parameters as stored in result rows ({} for an unknown method)."""
    from ..errors import UserError
    from ..methods.base import make_method

    try:
        return make_method(method).describe()
    except UserError:
        return {}


def load_rows(path: str | Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Rows of a run file, with a clear error for a missing or unreadable one.

    Lines that are not JSON objects are skipped and reported through ``warn`` (default: a line
    on stderr) with their 1-based line numbers.
    """
    from .runfile import read_run

    p = Path(path)
    if not p.is_file():
        raise UserError(f"run file not found: {path}")
    bad: list[int] = []
    try:
        rows = read_run(p, bad_lines=bad)
    except OSError as exc:
        raise UserError(f"cannot read run file {path}: {exc}") from None
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        message = f"{path}: skipped {len(bad)} corrupt line{'s' if len(bad) > 1 else ''} ({shown})"
        (warn or _warn)(message)
    if not rows:
        raise UserError(f"run file {path} has no results")
    return rows


def _warn(message: str) -> None:
    print(f"reasonexit: warning: {message}", file=sys.stderr)


def markdown_table(summaries: Sequence[dict[str, Any]]) -> str:
    """A markdown table of summary rows, side by side."""
    df = pd.DataFrame(list(summaries))
    return df.to_markdown(index=False) if _has_tabulate() else _plain_markdown(df)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _plain_markdown(df: pd.DataFrame) -> str:
    # pandas' to_markdown needs the optional 'tabulate' package; this small writer avoids the dependency.
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_cell(row[c]) for c in df.columns) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def plot_accuracy_vs_tokens(summaries: Sequence[dict[str, Any]], out_png: str | Path, title: str = "") -> Path:
    """Scatter accuracy against mean output tokens (filled) and compute tokens (hollow), one label a run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for s in summaries:
        label = s["run"] or s["method"]
        (pt,) = ax.plot(s["output_tokens"], s["accuracy"], "o", label=label)
        if s["compute_tokens"] != s["output_tokens"]:
            ax.plot(s["compute_tokens"], s["accuracy"], "o", mfc="none", color=pt.get_color())
            ax.plot([s["output_tokens"], s["compute_tokens"]], [s["accuracy"]] * 2, ":", color=pt.get_color())
    ax.set_xlabel("mean tokens per problem (filled: output, hollow: compute)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "accuracy vs tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def report(paths: Sequence[str | Path], plot: str | Path | None = None) -> tuple[str, Path | None]:
    """Summaries of run files as a markdown table, plus an accuracy-vs-tokens PNG if ``plot`` is given."""
    summaries = [summarize(load_rows(p), run=Path(p).stem) for p in paths]
    table = markdown_table(summaries)
    png = plot_accuracy_vs_tokens(summaries, plot) if plot else None
    return table, png
