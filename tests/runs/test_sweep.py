"""``reasonexit sweep``: settings, the shared engine's step count, run files, resume, table and plots."""

from __future__ import annotations

import json

import pytest
from conftest import CLI_ENGINE_ARGS

from reasonexit.cli import main
from reasonexit.data.datasets import load_problems
from reasonexit.errors import UserError
from reasonexit.methods import make_method
from reasonexit.methods.base import Decoding
from reasonexit.runs.runner import jobs_for, solve_all
from reasonexit.runs.sweep import (
    Setting,
    SweepOptions,
    parse_baseline,
    parse_grid,
    run_sweep,
    settings_of,
    sweep_report,
    sweep_rows,
)


def test_grid_and_baseline_specs() -> None:
    grid = parse_grid("deer:threshold=0.5,0.9;confidence=mean,min")
    assert [s.options for s in grid] == [
        {"threshold": "0.5", "confidence": "mean"},
        {"threshold": "0.5", "confidence": "min"},
        {"threshold": "0.9", "confidence": "mean"},
        {"threshold": "0.9", "confidence": "min"},
    ]
    assert grid[0].label == "deer_threshold-0.5_confidence-mean"
    base = parse_baseline("majority:n=8;sample-temperature=0.6")
    assert base.baseline and base.options == {"n": "8", "sample_temperature": "0.6"}
    assert parse_baseline("deer:transitions=Wait,Hmm").options == {"transitions": "Wait,Hmm"}  # taken whole
    assert Setting("vanilla", {}).label == "vanilla"
    opts = SweepOptions(grid=("budget:max_thinking_tokens=32,64",), baseline=("vanilla",))
    assert [s.label for s in settings_of(opts)] == [
        "vanilla",
        "budget_max_thinking_tokens-32",
        "budget_max_thinking_tokens-64",
    ]
    for bad in (":threshold=1", "deer:threshold", "deer:=0.5", "deer:threshold="):
        with pytest.raises(UserError):
            parse_grid(bad)
    with pytest.raises(UserError, match="twice"):
        settings_of(SweepOptions(grid=("vanilla",), baseline=("vanilla",)))
    with pytest.raises(UserError):
        SweepOptions(grid=(), baseline=())


def test_engine_steps_count_forward_passes(session) -> None:
    """All in flight, 8 problems take about as many steps as the longest; one at a time, the sum."""
    jobs = jobs_for(session, load_problems("synthetic", limit=8))
    dec = Decoding(max_tokens=64)

    def steps(in_flight: int) -> tuple[int, list[int]]:
        before = session.steps.steps
        res = session.run(solve_all(session, make_method("vanilla"), jobs, dec, in_flight))
        return session.steps.steps - before, [r.output_tokens for r in res]

    together, lengths = steps(8)
    apart, _ = steps(1)
    assert max(lengths) <= together < 0.5 * sum(lengths)
    assert apart >= sum(lengths)  # at least one step per token when one sequence decodes at a time


def test_sweep_runs_resumes_and_reports(session, tmp_path) -> None:
    problems = load_problems("synthetic", limit=6)
    settings = [
        Setting("vanilla", {}, baseline=True),
        *parse_grid("budget:max_thinking_tokens=16,48"),
        *parse_grid("deer:threshold=1.01;budget_ratio=1.0"),
    ]
    methods = [make_method(s.method, s.options) for s in settings]
    dec = Decoding(max_tokens=512)
    out = tmp_path / "sweep"
    rows = run_sweep(settings, methods, problems, "synthetic", session, dec, out, progress=False)
    by = {r["setting"]: r for r in rows}
    assert list(by) == [
        "vanilla",
        "budget_max_thinking_tokens-16",
        "budget_max_thinking_tokens-48",
        "deer_threshold-1.01_budget_ratio-1.0",
    ]
    assert all(r["n"] == 6 and r["engine_steps"] > 0 and r["wall_s"] > 0 for r in rows)
    assert by["vanilla"]["output_saved_%"] == 0
    b16, b48 = by["budget_max_thinking_tokens-16"], by["budget_max_thinking_tokens-48"]
    van = by["vanilla"]
    for b in (b16, b48):  # savings against the baseline, from the run files' own means
        assert b["output_saved_%"] == round(100 * (1 - b["output_tokens"] / van["output_tokens"]), 1) > 0
    deer = by["deer_threshold-1.01_budget_ratio-1.0"]  # never exits: vanilla's outputs, plus the probes in compute
    assert deer["output_tokens"] == by["vanilla"]["output_tokens"] and deer["compute_saved_%"] < 0
    fewest = min(rows, key=lambda r: r["output_tokens"])
    assert fewest["front"]  # the fewest tokens is always on the front
    timing = json.loads((out / "timing.json").read_text())
    assert set(timing) == set(by)

    # a second run resumes: nothing is solved again, the measured time and steps stay
    again = run_sweep(settings, methods, problems, "synthetic", session, dec, out, progress=False)
    assert json.loads((out / "timing.json").read_text()) == timing
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]
    assert all(sum(1 for _ in open(out / f"{s.label}.jsonl")) == 6 for s in settings)

    # the report redraws the same table and the plot from the files alone
    table, png = sweep_report(out)
    assert "vanilla (baseline)" in table and "± " in table and png.stat().st_size > 10_000
    assert [r["accuracy"] for r in sweep_rows(out)] == [r["accuracy"] for r in rows]
    assert main(["report", str(out), "--plot", ""]) == 0


def test_sweep_cli_bad_input_is_one_line(tmp_path, capsys) -> None:
    for args, words in (
        (["--grid", "deer:threshold"], "not option=value"),
        (["--grid", "nosuch:x=1"], "nosuch"),
        (["--grid", "deer:threshold=2x"], "threshold"),
        (["--limit", "0"], "--limit"),
    ):
        assert main(["sweep", "--out", str(tmp_path / "s"), *CLI_ENGINE_ARGS, *args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], lines
    assert not (tmp_path / "s").exists()  # nothing written


def test_an_interrupted_sweep_resumes_only_what_is_missing(session, tmp_path) -> None:
    """A sweep stopped in its second setting (rows cut short, the third never started) re-runs
    only the missing problems, through the API as a user calls it."""
    import reasonexit

    out = tmp_path / "sweep"
    kw = dict(baseline=["vanilla"], out=str(out), session=session, dataset="synthetic", limit=6, max_tokens=256)
    grid = ["budget:max_thinking_tokens=32,64"]
    first = reasonexit.sweep(grid, **kw)
    timing = json.loads((out / "timing.json").read_text())
    cut = out / "budget_max_thinking_tokens-32.jsonl"
    lines = cut.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:2]) + lines[2][:40])  # two rows, then a row torn by the kill
    (out / "budget_max_thinking_tokens-64.jsonl").unlink()
    del timing["budget_max_thinking_tokens-64"]
    (out / "timing.json").write_text(json.dumps(timing))
    before = session.steps.steps

    again = reasonexit.sweep(grid, **kw)
    after = json.loads((out / "timing.json").read_text())
    assert after["vanilla"] == timing["vanilla"]  # finished: not run again
    assert after["budget_max_thinking_tokens-32"]["steps"] > timing["budget_max_thinking_tokens-32"]["steps"]
    assert "budget_max_thinking_tokens-64" in after and session.steps.steps > before
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in first]  # greedy: the same results
    ids = [
        json.loads(x)["id"]
        for x in cut.read_text().splitlines()
        if x.strip().startswith("{") and x.strip().endswith("}")
    ]
    assert len(set(ids)) == 6


def test_sampled_sweep_reports_pass_at_1_with_its_error(session, tmp_path) -> None:
    problems = load_problems("synthetic", limit=3)
    settings = [Setting("vanilla", {}, baseline=True)]
    dec = Decoding(max_tokens=96, temperature=0.8, top_p=0.95)
    rows = run_sweep(settings, [make_method("vanilla")], problems, "synthetic", session, dec, tmp_path, samples=2,
                     progress=False)  # fmt: skip
    (row,) = rows
    assert row["n"] == 6  # 3 problems x 2 samples, each a row of the run file
    per_problem = {}
    for line in (tmp_path / "vanilla.jsonl").read_text().splitlines():
        r = json.loads(line)
        per_problem.setdefault(r["problem_id"], []).append(bool(r["correct"]))
    shares = [sum(v) / len(v) for v in per_problem.values()]
    assert row["accuracy"] == pytest.approx(100 * sum(shares) / len(shares), abs=0.01)
    assert row["accuracy_se"] == row["accuracy_se"]  # a number, the spread across problems
