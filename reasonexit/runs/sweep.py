"""``reasonexit sweep``: many methods and settings on one engine, and the trade-off they draw.

A sweep is a list of settings (a method with its options): grids of one or more methods, whose
options take every combination of the values given, and baselines, single settings the others are
compared against. Every setting is an ordinary run file in the sweep's directory (``<label>.jsonl``)
solved on the one shared engine, so an interrupted sweep resumes where it stopped and ``reasonexit
report DIR`` redraws the table and plots from the files.

The table has one row per setting: accuracy with its standard error, mean output, compute and
prompt tokens, wall time, engine steps (forward passes, from vLLM's per-iteration statistics: the
stand-in for GPU wall time, see :mod:`reasonexit.engine.steps`), the output and compute tokens
saved against the first baseline, and whether the setting is on the Pareto front of accuracy
against output tokens. Wall time and steps are measured per setting while it runs alone on the
engine, and kept in ``timing.json`` beside the run files (a resumed setting adds its new part).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..options import opt
from .options import ProblemOptions

TIMING_FILE = "timing.json"


@dataclass
class SweepOptions(ProblemOptions):
    """The settings a sweep runs and where its files go (problem options as for ``eval``)."""

    grid: tuple[str, ...] = opt(
        (),
        help='a method and values of its options, every combination run: "deer:threshold=0.5,0.9,0.99" or '
        '"deer:threshold=0.9,0.99;confidence=mean,min"',
        repeat=True,
    )
    baseline: tuple[str, ...] = opt(
        ("vanilla",),
        help='a reference setting, "vanilla" or "majority:n=8;sample_temperature=0.6"; tokens saved are '
        "measured against the first",
        repeat=True,
    )
    out: str = opt("runs/sweep", help="directory of the sweep: one run file per setting; re-running resumes")

    def __post_init__(self) -> None:
        """Check the problem options, then that there is something to run."""
        super().__post_init__()
        if not self.grid and not self.baseline:
            raise UserError("a sweep needs at least one --grid or --baseline")


@dataclass
class Setting:
    """One run of a sweep: a method, its options (as text, as on the command line) and its label."""

    method: str
    options: dict[str, str]
    baseline: bool = False

    @property
    def label(self) -> str:
        """File-name-safe label, e.g. ``deer_threshold-0.9`` (``vanilla`` for no options)."""
        parts = [self.method] + [f"{k}-{v}" for k, v in self.options.items()]
        return re.sub(r"[^A-Za-z0-9._=-]+", "_", "_".join(parts))


def _split_spec(spec: str) -> tuple[str, list[tuple[str, str]]]:
    """``"method:key=v1,v2;key2=v3"`` -> ``("method", [("key", "v1,v2"), ("key2", "v3")])``."""
    name, _, rest = spec.strip().partition(":")
    if not name:
        raise UserError(f"setting {spec!r}: no method name (expected method:option=value,...)")
    pairs = []
    for part in filter(None, (p.strip() for p in rest.split(";"))):
        key, eq, values = part.partition("=")
        if not eq or not key.strip() or not values.strip():
            raise UserError(f"setting {spec!r}: {part!r} is not option=value")
        pairs.append((key.strip().replace("-", "_"), values.strip()))
    return name.strip(), pairs


def parse_grid(spec: str) -> list[Setting]:
    """Every combination of the values of a grid spec, in the order given."""
    name, pairs = _split_spec(spec)
    keys = [k for k, _ in pairs]
    choices = [[v.strip() for v in values.split(",") if v.strip()] for _, values in pairs]
    return [Setting(name, dict(zip(keys, combo, strict=True))) for combo in itertools.product(*choices)]


def parse_baseline(spec: str) -> Setting:
    """A single setting (option values are taken whole: ``transitions=Wait,Hmm`` stays one value)."""
    name, pairs = _split_spec(spec)
    return Setting(name, dict(pairs), baseline=True)


def settings_of(options: SweepOptions) -> list[Setting]:
    """Baselines first, then the grids; a label that repeats is an error."""
    settings = [parse_baseline(b) for b in options.baseline]
    for g in options.grid:
        settings += parse_grid(g)
    seen: set[str] = set()
    for s in settings:
        if s.label in seen:
            raise UserError(f"setting {s.label} is given twice")
        seen.add(s.label)
    return settings


# ------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------


def read_timing(out_dir: Path) -> dict[str, dict[str, float]]:
    """Per label: wall seconds and engine steps measured so far (``{}`` without a timing file)."""
    path = out_dir / TIMING_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_timing(out_dir: Path, timing: dict[str, dict[str, float]]) -> None:
    tmp = out_dir / (TIMING_FILE + ".tmp")
    tmp.write_text(json.dumps(timing, indent=1, sort_keys=True) + "\n")
    tmp.replace(out_dir / TIMING_FILE)  # whole or not at all


def run_sweep(
    settings: Sequence[Setting],
    methods: Sequence[Any],
    problems: Sequence[Any],
    dataset: str,
    session: Any,
    decoding: Any,
    out_dir: Path,
    *,
    samples: int = 1,
    max_in_flight: int = 256,
    progress: bool = True,
    fail_fast: bool = False,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Run every setting on ``session`` (one after another, all its problems in flight), each into
    its own run file, and return their summary rows (:func:`sweep_rows`)."""
    from .bench import warm_up
    from .evaluate import evaluate
    from .runfile import open_run, run_signature
    from .runner import jobs_for

    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for setting, method in zip(settings, methods, strict=True):
        signature = run_signature(session.config.model, dataset, method, decoding, samples=samples)
        runs.append(open_run(out_dir / f"{setting.label}.jsonl", signature))  # all checked before any runs
    session.start()
    # untimed: the first requests of a kind are slow on the CPU engine, and whichever setting met
    # them first would be charged for it
    warm_up(session, jobs_for(session, problems[:8]), decoding)
    for method in methods:  # verifier engines and the like start here, not in a setting's time
        session.run(method.prepare(session))
    timing = read_timing(out_dir)
    for i, (setting, method, run_file) in enumerate(zip(settings, methods, runs, strict=True), start=1):
        log(f"[{i}/{len(settings)}] {setting.label}")
        steps0, start = session.steps.steps, time.perf_counter()
        result = evaluate(
            problems,
            method,
            session,
            decoding,
            run_file,
            signature=run_file.signature,
            max_in_flight=max_in_flight,
            progress=progress,
            fail_fast=fail_fast,
            samples=samples,
        )
        if result.new_rows:
            t = timing.setdefault(setting.label, {"wall_s": 0.0, "steps": 0})
            t["wall_s"] = round(t["wall_s"] + time.perf_counter() - start, 3)
            t["steps"] = int(t["steps"] + session.steps.steps - steps0)
            _write_timing(out_dir, timing)
    return sweep_rows(out_dir, settings)


# ------------------------------------------------------------------------------------------------
# Table and plots
# ------------------------------------------------------------------------------------------------


def sweep_rows(out_dir: Path, settings: Sequence[Setting] | None = None) -> list[dict[str, Any]]:
    """Summary rows of a sweep's run files, in the order of its settings.

    With ``settings``, they are recorded in the directory's ``sweep.json``; without, they are read
    from it (``reasonexit report DIR``). Settings without a run file yet are left out.
    """
    from .report import load_rows, summarize

    out_dir = Path(out_dir)
    meta_path = out_dir / "sweep.json"
    if settings is None:
        if not meta_path.is_file():
            raise UserError(f"{out_dir} is not a sweep directory (no sweep.json)")
        meta = json.loads(meta_path.read_text())
        settings = [Setting(s["method"], s["options"], s["baseline"]) for s in meta["settings"]]
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = {"settings": [{"method": s.method, "options": s.options, "baseline": s.baseline} for s in settings]}
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    timing = read_timing(out_dir)
    rows = []
    for s in settings:
        path = out_dir / f"{s.label}.jsonl"
        if not path.is_file():
            continue
        data = load_rows(path)
        summary = summarize(data, run=s.label)
        n = summary["n"] - summary["errors"]
        acc = summary["accuracy"]
        se = summary.get("pass@1_se")
        if se is None:
            se = 100 * math.sqrt(max(acc / 100 * (1 - acc / 100), 0.0) / n) if n > 0 and acc == acc else float("nan")
        prompts = [int(r.get("prompt_tokens") or 0) for r in data]
        t = timing.get(s.label, {})
        rows.append(
            {
                "setting": s.label,
                "method": s.method,
                "baseline": s.baseline,
                "n": summary["n"],
                "accuracy": summary.get("pass@1", acc),
                "accuracy_se": round(se, 2),
                "output_tokens": summary["output_tokens"],
                "compute_tokens": summary["compute_tokens"],
                "prompt_tokens": round(sum(prompts) / max(len(prompts), 1), 1),
                "wall_s": t.get("wall_s", float("nan")),
                "engine_steps": t.get("steps", float("nan")),
            }
        )
    _add_savings_and_front(rows)
    return rows


def _add_savings_and_front(rows: list[dict[str, Any]]) -> None:
    """Tokens saved against the first baseline; Pareto front of accuracy vs output tokens."""
    base = next((r for r in rows if r["baseline"]), None)
    for r in rows:
        for key in ("output_tokens", "compute_tokens"):
            saved = 1 - r[key] / base[key] if base and base[key] else float("nan")
            r[f"{key.split('_')[0]}_saved_%"] = round(100 * saved, 1)
    on_front = {id(r) for r in _front(rows, "output_tokens")}
    for r in rows:
        r["front"] = id(r) in on_front


def sweep_table(rows: Sequence[dict[str, Any]]) -> str:
    """The markdown table of a sweep (accuracy as ``value ± s.e.``)."""
    from .report import markdown_table

    shown = []
    for r in rows:
        shown.append(
            {
                "setting": r["setting"] + (" (baseline)" if r["baseline"] else ""),
                "n": r["n"],
                "accuracy %": f"{r['accuracy']:.1f} ± {r['accuracy_se']:.1f}",
                "output tok": r["output_tokens"],
                "compute tok": r["compute_tokens"],
                "prompt tok": r["prompt_tokens"],
                "wall s": r["wall_s"],
                "engine steps": r["engine_steps"],
                "output saved %": r["output_saved_%"],
                "compute saved %": r["compute_saved_%"],
                "front": "yes" if r["front"] else "",
            }
        )
    return markdown_table(shown)


def plot_sweep(rows: Sequence[dict[str, Any]], out_png: str | Path, title: str = "") -> Path:
    """Accuracy against output tokens, compute tokens and wall time: one panel each, the front
    drawn, one colour per method, baselines as stars, every point labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_spec = (
        ("output_tokens", "mean output tokens per problem"),
        ("compute_tokens", "mean compute tokens per problem (probes, aborted traces included)"),
        ("wall_s", "wall time of the run (s)"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    methods = sorted({r["method"] for r in rows})
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for ax, (key, xlabel) in zip(axes, axes_spec, strict=True):
        pts = [r for r in rows if r[key] == r[key]]  # skip NaN (no timing)
        for m in methods:
            mine = [r for r in pts if r["method"] == m and not r["baseline"]]
            if mine:
                ax.errorbar(
                    [r[key] for r in mine],
                    [r["accuracy"] for r in mine],
                    yerr=[r["accuracy_se"] for r in mine],
                    fmt="o",
                    color=colours[m],
                    label=m,
                    capsize=2,
                )
        for r in pts:
            if r["baseline"]:
                ax.plot(
                    r[key], r["accuracy"], "*", ms=13, color=colours[r["method"]], label=f"{r['setting']} (baseline)"
                )
            ax.annotate(
                _short(r["setting"]), (r[key], r["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        front = _front(pts, key)
        if len(front) > 1:
            ax.plot([r[key] for r in front], [r["accuracy"] for r in front], "--", color="grey", lw=1, label="front")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=min(6, len(unique)), fontsize=8)
    fig.suptitle(title or "accuracy against cost")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _short(label: str) -> str:
    return label.replace("threshold-", "t=").replace("max_thinking_tokens-", "b=")


def _front(rows: Sequence[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Settings no other beats on both accuracy and ``key`` (lower is better), by ``key``."""
    out = [
        r
        for r in rows
        if not any(
            o is not r
            and o["accuracy"] >= r["accuracy"]
            and o[key] <= r[key]
            and (o["accuracy"] > r["accuracy"] or o[key] < r[key])
            for o in rows
        )
    ]
    return sorted(out, key=lambda r: r[key])


def sweep_report(out_dir: str | Path, plot: bool = True) -> tuple[str, Path | None]:
    """The table (and ``sweep.png``) of a sweep directory, from its run files."""
    out_dir = Path(out_dir)
    rows = sweep_rows(out_dir)
    if not rows:
        raise UserError(f"{out_dir} holds no run files of its sweep yet")
    table = sweep_table(rows)
    (out_dir / "sweep.md").write_text(table + "\n")
    png = plot_sweep(rows, out_dir / "sweep.png", title=f"sweep {out_dir.name}") if plot else None
    return table, png


def sweep_main(options: SweepOptions, session: Any, decoding: Any, say: Any = print) -> list[dict[str, Any]]:
    """Check every setting before the engine starts, run them, write ``sweep.md`` and ``sweep.png``
    into the sweep's directory and return its rows (``say`` prints the table and the paths)."""
    import sys

    from ..methods.base import make_method

    settings = settings_of(options)
    methods = [make_method(s.method, s.options) for s in settings]  # every setting checked first
    problems = options.load()
    for m in methods:
        m.check_model(session.markers.has_thinking)
    out = Path(options.out)
    print(
        f"model: {session.config.model} ({session.markers.describe()}); {len(problems)} problems; "
        f"{len(settings)} settings into {out}/",
        file=sys.stderr,
    )
    rows = run_sweep(
        settings,
        methods,
        problems,
        options.dataset,
        session,
        decoding,
        out,
        samples=options.samples,
        max_in_flight=options.max_in_flight,
        progress=not options.quiet,
        fail_fast=options.fail_fast,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    table = sweep_table(rows)
    (out / "sweep.md").write_text(table + "\n")
    say(table)
    say(f"table: {out / 'sweep.md'}\nplot: {plot_sweep(rows, out / 'sweep.png', title=f'sweep {out.name}')}")
    return rows
