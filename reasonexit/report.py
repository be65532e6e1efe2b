"""Result tables and plots: summaries of run files with pandas, accuracy-vs-tokens plots with matplotlib."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import UserError

SUMMARY_COLUMNS = [
    "run",
    "method",
    "params",
    "n",
    "accuracy",
    "output_tokens",
    "compute_tokens",
    "thinking_tokens",
    "latency_s",
]


def summarize(rows: Sequence[dict[str, Any]], run: str = "", wall_s: float | None = None) -> dict[str, Any]:
    """One summary row: accuracy (%), mean tokens, mean latency; throughput when the run wall time is known."""
    if not rows:
        raise UserError(f"run {run or '(unnamed)'} has no results")
    df = pd.DataFrame(rows)
    graded = df["correct"].dropna() if "correct" in df else pd.Series(dtype=float)
    out: dict[str, Any] = {
        "run": run,
        "method": str(df["method"].iloc[0]),
        "params": _short_params(df["params"].iloc[0], str(df["method"].iloc[0])),
        "n": len(df),
        "accuracy": round(100.0 * graded.astype(float).mean(), 2) if len(graded) else float("nan"),
        "output_tokens": round(float(df["output_tokens"].mean()), 1),
        "compute_tokens": round(float(df["compute_tokens"].mean()), 1),
        "thinking_tokens": round(float(df["thinking_tokens"].mean()), 1),
        "latency_s": round(float(df["wall_s"].mean()), 3),
    }
    # The verifier's (or probes') share of compute, for early-exit methods that record it.
    infos = df["info"] if "info" in df else pd.Series(dtype=object)
    if any(isinstance(i, dict) and "verifier_tokens" in i for i in infos):
        for key in ("verifier_tokens", "verifier_prompt_tokens", "verifier_wall_s"):
            vals = [float(i.get(key, 0) or 0) if isinstance(i, dict) else 0.0 for i in infos]
            out[key] = round(sum(vals) / len(vals), 3 if key == "verifier_wall_s" else 1)
    if wall_s is not None:
        out["wall_s"] = round(wall_s, 2)
        out["output_tok_per_s"] = round(float(df["output_tokens"].sum()) / wall_s, 1) if wall_s > 0 else float("nan")
    return out


def _short_params(params: Any, method: str = "") -> str:
    """The parameters that differ from the method's defaults, as ``k=v`` pairs."""
    if not params:
        return ""
    if isinstance(params, str):
        return params
    defaults = _defaults(method)
    shown = {k: v for k, v in params.items() if k not in defaults or defaults[k] != v}
    if "inner_options" in params:  # a nested method: show it as inner=name(its own non-defaults)
        inner = str(params.get("inner", ""))
        shown.pop("inner_options", None)
        shown["inner"] = f"{inner}({_short_params(params['inner_options'], inner)})"
    return ", ".join(f"{k}={v!r}" if isinstance(v, str) and k != "inner" else f"{k}={v}" for k, v in shown.items())


def _defaults(method: str) -> dict[str, Any]:
    """A method's default parameters as stored in result rows ({} for an unknown method)."""
    from .errors import UserError
    from .methods.base import make_method

    try:
        return make_method(method).describe()
    except UserError:
        return {}


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a run file, with a clear error for a missing or unreadable one."""
    from .runner import read_run

    p = Path(path)
    if not p.is_file():
        raise UserError(f"run file not found: {path}")
    try:
        rows = read_run(p)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read run file {path}: {exc}") from None
    if not rows:
        raise UserError(f"run file {path} has no results")
    return rows


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
