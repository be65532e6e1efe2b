"""``reasonexit calibrate``: the most aggressive setting whose accuracy loss stays within a bound,
with a stated confidence (Learn then Test, fixed-sequence testing).

For one parameter of one method (DEER's ``threshold``, a budget's ``max_thinking_tokens``, ...)
and a grid of values, every value and a reference (full thinking, ``vanilla``, or e.g. a majority
vote) are run on calibration problems. The loss of a value on a problem is 1 when the reference
answers it correctly and the value does not, else 0: a problem both get wrong, or that only the
early exit gets right, costs nothing, as early-exit risk control counts it against the full model
(Jazbec et al., "Fast yet Safe: Early-Exiting with Risk Control", 2024; Angelopoulos et al.,
"Learn then Test", 2021). The risk of a value is its expected loss on problems like these.

Selection (Learn then Test with fixed-sequence testing): for each value, from the most
conservative to the most aggressive, the null hypothesis "its risk exceeds ``max_loss``" is tested
with a p-value from its calibration loss (the exact binomial tail, which is valid and tightest
for 0/1 losses, or Hoeffding-Bentkus). Values
are accepted while their p-value is at most ``delta``; the first that fails ends the sequence. The
last accepted value is chosen. With probability at least ``1 - delta`` over the calibration
problems, its risk on new problems from the same distribution is at most ``max_loss``. If the
first value already fails, no value qualifies and none is chosen.
"""

from __future__ import annotations

import datetime
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import UserError
from ..options import opt
from .options import ProblemOptions


@dataclass
class CalibrateOptions(ProblemOptions):
    """What ``reasonexit calibrate`` tests, with which guarantee, and where it writes."""

    method: str = opt("deer", help="the method whose parameter is calibrated; its other options follow as --name value")
    param: str = opt("threshold", help="the parameter calibrated")
    grid: tuple[str, ...] = opt(("0.5", "0.8", "0.9", "0.95", "0.99", "0.999"), help="values of the parameter to test")
    conservative: Literal["high", "low"] = opt(
        "high",
        help="which end of the grid exits least (high for thresholds and budgets); testing starts there",
    )
    max_loss: float = opt(
        0.02, help="bound on the risk: the share of problems the reference gets right and the setting wrong"
    )
    delta: float = opt(0.1, help="the bound holds with probability at least 1 - delta")
    reference: str = opt("vanilla", help='the reference setting: "vanilla" (full thinking) or e.g. "majority:n=8"')
    pvalue: Literal["binomial", "hb"] = opt(
        "binomial",
        help="p-value of each test: the exact binomial tail (valid for these 0/1 losses, and the tightest), "
        "or Hoeffding-Bentkus (valid for any loss in [0, 1], more conservative)",
    )
    runs: str = opt("runs/calibrate", help="directory of the run files (re-running resumes)")
    out: str = opt("calibrated.yaml", help="settings file written for the chosen value (eval/serve/API --settings)")
    check_split: str | None = opt(None, help="also measure the chosen setting on this split (held out), e.g. test")

    def __post_init__(self) -> None:
        """Check the bound, the confidence and the grid."""
        super().__post_init__()
        if not 0 < self.max_loss < 1:
            raise UserError(f"--max-loss must be in (0, 1), got {self.max_loss}")
        if not 0 < self.delta < 1:
            raise UserError(f"--delta must be in (0, 1), got {self.delta}")
        if not self.grid:
            raise UserError("--grid needs at least one value")


# ------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed in log space (exact for the n of a calibration set)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    total = 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    for i in range(k + 1):
        total += math.exp(
            math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        )
    return min(total, 1.0)


def binomial_pvalue(loss: float, n: int, alpha: float) -> float:
    """Exact p-value of "risk > alpha" given mean loss ``loss`` over ``n`` problems (0/1 losses)."""
    return binom_cdf(round(loss * n), n, alpha)


def hb_pvalue(loss: float, n: int, alpha: float) -> float:
    """Hoeffding-Bentkus p-value of "risk > alpha" (Bates et al. 2021; Angelopoulos et al. 2021)."""
    if loss >= alpha:
        return 1.0
    if loss <= 0:
        hoeffding = math.exp(n * math.log1p(-alpha))
    else:
        kl = loss * math.log(loss / alpha) + (1 - loss) * math.log((1 - loss) / (1 - alpha))
        hoeffding = math.exp(-n * kl)
    bentkus = math.e * binom_cdf(math.ceil(n * loss), n, alpha)
    return min(hoeffding, bentkus, 1.0)


def fixed_sequence(pvalues: Sequence[float], delta: float) -> int | None:
    """Index of the last hypothesis rejected, testing in order and stopping at the first p > delta."""
    chosen = None
    for i, p in enumerate(pvalues):
        if p > delta:
            break
        chosen = i
    return chosen


def losses(reference: Sequence[bool | None], setting: Sequence[bool | None]) -> list[int]:
    """Per problem: 1 when the reference is right and the setting wrong, else 0."""
    return [int(bool(r) and not bool(s)) for r, s in zip(reference, setting, strict=True)]


# ------------------------------------------------------------------------------------------------
# The selection and its settings file
# ------------------------------------------------------------------------------------------------


@dataclass
class Calibration:
    """The outcome: every value's calibration loss and p-value, and the value chosen (or none)."""

    values: list[str]  # in test order, most conservative first
    loss: list[float]
    pvalues: list[float]
    tokens: list[float]  # mean output tokens per problem of each value
    reference_tokens: float
    chosen: int | None
    n: int

    def table(self) -> str:
        """One line per value in test order."""
        lines = ["| value | calibration loss | p-value | output tokens | accepted |", "| --- | --- | --- | --- | --- |"]
        for i, v in enumerate(self.values):
            accepted = self.chosen is not None and i <= self.chosen
            mark = "yes" if accepted else ""
            lines.append(f"| {v} | {self.loss[i]:.4f} | {self.pvalues[i]:.4g} | {self.tokens[i]:.1f} | {mark} |")
        return "\n".join(lines)


def select(
    values: Sequence[str],
    reference: Sequence[bool | None],
    per_value: Sequence[Sequence[bool | None]],
    tokens: Sequence[float],
    reference_tokens: float,
    max_loss: float,
    delta: float,
    pvalue: str = "binomial",
) -> Calibration:
    """Learn then Test over ``values`` (given most conservative first)."""
    n = len(reference)
    if n == 0:
        raise UserError("no calibration problems")
    test = hb_pvalue if pvalue == "hb" else binomial_pvalue
    mean_loss = [sum(losses(reference, s)) / n for s in per_value]
    pvals = [test(m, n, max_loss) for m in mean_loss]
    return Calibration(list(values), mean_loss, pvals, list(tokens), reference_tokens, fixed_sequence(pvals, delta), n)


def ordered_grid(grid: Sequence[str], conservative: str) -> list[str]:
    """The grid from the most conservative value to the most aggressive (numeric order)."""
    try:
        return sorted(grid, key=float, reverse=conservative == "high")
    except ValueError:
        raise UserError(f"--grid values must be numbers to be ordered, got {', '.join(grid)}") from None


def write_settings(path: str | Path, method: str, options: dict[str, Any], record: dict[str, Any]) -> Path:
    """Write a settings file (YAML): the method, its options, and how they were chosen."""
    import yaml

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    body = {"method": method, "options": options, "calibration": {**record, "date": datetime.date.today().isoformat()}}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(yaml.safe_dump(body, sort_keys=False))
    tmp.replace(out)
    return out


def load_settings(path: str | Path) -> tuple[str, dict[str, Any]]:
    """The method and options of a settings file (``--settings``), checked to be one."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"settings file not found: {path}")
    try:
        body = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read settings file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(body, dict) or not isinstance(body.get("method"), str):
        raise UserError(f"{path} is not a settings file (it needs a 'method' name and 'options')")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise UserError(f"{path}: 'options' must be a mapping")
    return body["method"], dict(options)


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def calibrate_command(
    options: CalibrateOptions,
    base: dict[str, str],
    session: Any,
    decoding: Any,
    log: Any = _log,
    say: Any = print,
) -> dict[str, Any]:
    """Run the reference and every value on the calibration split, choose, write the settings file,
    and (``check_split``) measure the choice on held-out problems.

    Returns the outcome: ``chosen`` (the value, or ``None`` when none qualifies), ``table`` (each
    value's calibration loss, p-value and tokens), the ``record`` written with the settings and
    its ``settings`` path (``None`` when nothing was chosen). ``say`` prints the result lines.
    """
    from ..methods.base import make_method
    from .sweep import Setting, parse_baseline, run_sweep

    base = {k.replace("-", "_"): v for k, v in base.items()}
    param = options.param.replace("-", "_")
    if param in base:
        raise UserError(f"--{options.param.replace('_', '-')} is the calibrated parameter; give its values with --grid")
    if options.samples != 1:
        raise UserError("calibrate uses one sample per problem (--samples 1)")
    values = ordered_grid(options.grid, options.conservative)
    reference = parse_baseline(options.reference)
    settings = [reference] + [Setting(options.method, {**base, param: v}) for v in values]
    methods = [make_method(s.method, s.options) for s in settings]  # all checked before the engine starts
    for m in methods:
        m.check_model(session.markers.has_thinking)
    split = options.split or "default"
    problems = options.load()

    def correctness(out_dir: Path, chosen: Sequence[Any], ms: Sequence[Any], probs: Sequence[Any]) -> list[dict]:
        run_sweep(chosen, ms, probs, options.dataset, session, decoding, out_dir,
                  max_in_flight=options.max_in_flight, progress=not options.quiet, fail_fast=options.fail_fast,
                  log=log)  # fmt: skip
        return [rows_by_problem(out_dir / f"{s.label}.jsonl", probs) for s in chosen]

    runs = correctness(Path(options.runs) / split, settings, methods, problems)
    ref_rows, value_rows = runs[0], runs[1:]
    ids = [p.id for p in problems]
    ref_ok = [ref_rows[i]["correct"] for i in ids]
    cal = select(
        values,
        ref_ok,
        [[rows[i]["correct"] for i in ids] for rows in value_rows],
        [_mean(rows, ids, "output_tokens") for rows in value_rows],
        _mean(ref_rows, ids, "output_tokens"),
        options.max_loss,
        options.delta,
        options.pvalue,
    )
    log(cal.table())
    outcome: dict[str, Any] = {
        "chosen": None,
        "settings": None,
        "record": None,
        "table": [
            {"value": v, "loss": cal.loss[i], "p_value": cal.pvalues[i], "output_tokens": cal.tokens[i]}
            for i, v in enumerate(cal.values)
        ],
    }
    guarantee = f"risk <= {options.max_loss:g} with probability >= {1 - options.delta:g}"
    if cal.chosen is None:
        say(f"no value of {options.param} qualifies for {guarantee} on {cal.n} problems; none chosen")
        return outcome
    value = cal.values[cal.chosen]
    saved = 1 - cal.tokens[cal.chosen] / cal.reference_tokens if cal.reference_tokens else float("nan")
    say(
        f"chosen: {options.method} {options.param}={value} ({guarantee}, against {options.reference}); "
        f"calibration loss {cal.loss[cal.chosen]:.4f} on {cal.n} problems of {options.dataset} {split}; "
        f"output tokens {100 * saved:.1f}% below the reference"
    )
    record: dict[str, Any] = {
        "model": session.config.model,
        "dataset": options.dataset,
        "split": split,
        "problems": cal.n,
        "param": options.param,
        "grid": values,
        "max_loss": options.max_loss,
        "delta": options.delta,
        "reference": options.reference,
        "pvalue": options.pvalue,
        "calibration_loss": round(cal.loss[cal.chosen], 6),
        "p_value": cal.pvalues[cal.chosen],
        "output_tokens_saved": round(saved, 4),
    }
    if options.check_split:
        held = options.load(options.check_split)
        pair = [reference, settings[1 + cal.chosen]]
        ref_h, val_h = correctness(
            Path(options.runs) / options.check_split, pair, [make_method(s.method, s.options) for s in pair], held
        )
        hids = [p.id for p in held]
        realised = sum(losses([ref_h[i]["correct"] for i in hids], [val_h[i]["correct"] for i in hids])) / len(hids)
        held_saved = 1 - _mean(val_h, hids, "output_tokens") / max(_mean(ref_h, hids, "output_tokens"), 1e-9)
        say(
            f"held out ({options.check_split}, {len(hids)} problems): loss {realised:.4f} "
            f"(bound {options.max_loss:g}), output tokens {100 * held_saved:.1f}% below the reference"
        )
        record["check"] = {"split": options.check_split, "problems": len(hids), "loss": round(realised, 6),
                           "output_tokens_saved": round(held_saved, 4)}  # fmt: skip
    described = methods[1 + cal.chosen].describe()  # the options as typed values
    chosen_options = {k: described.get(k, v) for k, v in {**base, param: value}.items()}
    path = write_settings(options.out, options.method, chosen_options, record)
    say(f"settings: {path} (use with --settings {path})")
    return {**outcome, "chosen": value, "settings": str(path), "record": record}


def rows_by_problem(path: Path, problems: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """The newest row of each problem of a run file, by problem id."""
    from .report import load_rows
    from .runfile import latest_rows

    rows = {r["id"]: r for r in latest_rows(load_rows(path))}
    missing = [p.id for p in problems if p.id not in rows]
    if missing:
        raise UserError(f"{path} has no row for {len(missing)} problems (e.g. {missing[0]}); re-run to resume")
    return rows


def _mean(rows: dict[str, dict[str, Any]], ids: Sequence[str], key: str) -> float:
    return sum(float(rows[i].get(key) or 0) for i in ids) / max(len(ids), 1)


def with_settings(path: str | Path | None, method: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The method and options a run uses given a settings file (``--settings``): the file's
    method, its options, then ``options`` given explicitly on top. ``method`` must be the file's,
    or the default ``vanilla`` (not given)."""
    if path is None:
        return method, options
    name, file_options = load_settings(path)
    if method not in ("vanilla", name):
        raise UserError(f"settings file {path} is for method {name}, not {method}")
    return name, {**file_options, **options}
