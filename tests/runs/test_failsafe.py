"""Runs that fail safely: failures stay with their problem, user files are never written, bad input
is refused before the engine starts, grading never stalls decoding, and signals end a run in order
with nothing left behind (real engine, tiny model; the signal test runs the CLI as a user would)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import CLI_ENGINE_ARGS, ROOT, TEST_MODEL

from reasonexit import generate
from reasonexit.cli import main
from reasonexit.data.datasets import load_problems
from reasonexit.data.grading import agrade, grade_isolated
from reasonexit.engine import Usage
from reasonexit.errors import UserError
from reasonexit.methods.base import Context, Method, Outcome, make_method, register

pytestmark = pytest.mark.slow

PATHOLOGICAL_GOLD = r"9^{9^{9}}"  # sympy would compute a 370-million-digit integer


# ---------------------------------------------------------------------------- a method that fails once
FAILING = {"on": True}


@dataclass
class _FailOnOneParams:
    fail_id: str = field(default="", metadata={"help": "id of the problem whose controller raises"})


@register
class _FailOnOne(Method):
    """Test-only: vanilla decoding, except that one problem's controller raises."""

    name = "test_fail_on_one"
    Params = _FailOnOneParams

    async def solve(self, ctx: Context) -> Outcome:
        """Raise for the chosen problem (while FAILING is on), decode as vanilla otherwise."""
        if FAILING["on"] and ctx.request_prefix == self.params.fail_id:
            raise RuntimeError("controller exploded\nsecond line not shown")
        return await make_method("vanilla").solve(ctx)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_failing_problem_gets_an_error_row_and_the_others_go_on(session, tmp_path, capsys):
    ids = [p.id for p in load_problems("synthetic", limit=4)]
    bad = ids[1]
    common = ["eval", *CLI_ENGINE_ARGS, "--limit", "4", "--max-tokens", "96", "--quiet"]
    ref = tmp_path / "vanilla.jsonl"
    assert main([*common, "--out", str(ref)]) == 0
    capsys.readouterr()
    out = tmp_path / "run.jsonl"
    FAILING["on"] = True
    args = [*common, "--method", "test_fail_on_one", "--fail-id", bad, "--out", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    rows = {r["id"]: r for r in _rows(out)}
    assert len(rows) == 4
    assert rows[bad]["exit_reason"] == "error"
    assert rows[bad]["error"] == "RuntimeError: controller exploded"
    assert rows[bad]["correct"] is None and rows[bad]["output_tokens"] == 0
    vanilla = {r["id"]: r for r in _rows(ref)}
    for i in ids:
        if i != bad:  # the other problems are exactly what vanilla decodes
            assert rows[i]["error"] is None and rows[i]["text"] == vanilla[i]["text"]
    header, _, line = table.splitlines()[:3]
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in line.split("|")], strict=True))
    assert cells["n"] == "4" and cells["errors"] == "1"

    # a resume runs the failed problem again (the file keeps both rows; the newest counts)
    FAILING["on"] = False
    assert main(args) == 0
    table = capsys.readouterr().out
    all_rows = _rows(out)
    assert len(all_rows) == 5 and [r["id"] for r in all_rows].count(bad) == 2
    assert all_rows[-1]["id"] == bad and all_rows[-1]["text"] == vanilla[bad]["text"]
    header, _, line = table.splitlines()[:3]
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in line.split("|")], strict=True))
    assert cells["n"] == "4" and cells["errors"] == "0"


def test_fail_fast_stops_at_the_first_failure(session, tmp_path, capsys):
    ids = [p.id for p in load_problems("synthetic", limit=3)]
    FAILING["on"] = True
    out = tmp_path / "ff.jsonl"
    code = main(
        [
            "eval",
            *CLI_ENGINE_ARGS,
            "--limit",
            "3",
            "--max-tokens",
            "64",
            "--quiet",
            "--method",
            "test_fail_on_one",
            "--fail-id",
            ids[0],
            "--fail-fast",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert f"problem {ids[0]} failed: RuntimeError: controller exploded (--fail-fast)" in err
    assert "re-run the same command to resume" in err
    assert not out.exists() or all(r["exit_reason"] != "error" for r in _rows(out))


# ---------------------------------------------------------------------------- grading off the loop
def test_a_slow_grading_call_does_not_block_decoding(session):
    prompt = session.chat_prompt_ids("What is 2 + 3?")

    async def scenario():
        from vllm import SamplingParams

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        grading = asyncio.ensure_future(agrade("7", PATHOLOGICAL_GOLD))
        gaps: list[float] = []

        async def ticker() -> None:
            last = loop.time()
            while not grading.done():
                await asyncio.sleep(0.05)
                now = loop.time()
                gaps.append(now - last)
                last = now

        tick = asyncio.ensure_future(ticker())
        params = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True, detokenize=False)
        comp = await session.complete(prompt, params, Usage())
        decoded_at = loop.time() - t0
        verdict = await grading
        graded_at = loop.time() - t0
        await tick
        return comp, decoded_at, verdict, graded_at, max(gaps)

    comp, decoded_at, verdict, graded_at, worst_gap = session.run(scenario())
    assert len(comp.token_ids) == 64
    assert verdict is False  # not shown equivalent: math_verify's own timeout, in the worker
    assert graded_at > 2.0  # the expression really is slow to grade ...
    assert decoded_at < graded_at  # ... and decoding went on meanwhile
    assert worst_gap < 1.0, f"the engine loop stalled for {worst_gap:.2f}s"


def test_grading_worker_has_a_hard_timeout():
    t0 = time.monotonic()
    assert grade_isolated("7", PATHOLOGICAL_GOLD, timeout=1.0) is False
    assert time.monotonic() - t0 < 4.0
    assert grade_isolated(r"\frac{1}{2}", "0.5") is True  # a fresh worker replaces the killed one


# ---------------------------------------------------------------------------- refused before any engine
def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("reasonexit: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--temperature", "-1"], "temperature must be non-negative"),
        (["--top-p", "0"], "top_p must be in (0, 1]"),
        (["--dtype", "bogus"], "--dtype 'bogus' is not a dtype vLLM knows"),
        (["--max-model-len", "1000000"], "longer than the model's context of"),
        (["--max-in-flight", "0"], "--max-in-flight must be >= 1"),
        (["--method", "deer", "--no-thinking"], "method deer needs a reasoning model"),
        (["--method", "ffs", "--inner", "budget", "--no-thinking"], "method budget needs a reasoning model"),
    ],
)
def test_bad_settings_are_refused_before_the_engine_starts(tmp_path, capsys, extra, message):
    out = tmp_path / "run.jsonl"
    assert main(["eval", "--model", TEST_MODEL, "--limit", "2", "--out", str(out), "--quiet", *extra]) == 2
    assert message in _one_error_line(capsys)
    assert not out.exists()


def test_unusable_out_paths_are_refused(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x\n")
    for out, message in (
        (tmp_path, "is a directory"),
        (a_file / "run.jsonl", "is not a directory"),
    ):
        assert main(["eval", "--model", TEST_MODEL, "--limit", "2", "--out", str(out), "--quiet"]) == 2
        assert message in _one_error_line(capsys)
    assert a_file.read_text() == "x\n"


def test_out_on_a_dataset_copy_leaves_it_unchanged(tmp_path, capsys):
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"problem": f"{i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(5)))
    before = data.read_bytes()
    code = main(["eval", "--model", TEST_MODEL, "--dataset", str(data), "--out", str(data), "--quiet"])
    assert code == 2
    assert "is not a reasonexit run file (line 1 is not a result row)" in _one_error_line(capsys)
    assert data.read_bytes() == before


# ---------------------------------------------------------------------------- report and API input
def test_report_names_corrupt_lines_and_rows_without_fields(tmp_path, capsys):
    good = {"id": "a", "method": "vanilla", "params": {}, "output_tokens": 5, "compute_tokens": 5, "wall_s": 0.1}
    run = tmp_path / "run.jsonl"
    run.write_text(json.dumps(good) + "\n{not json\n" + json.dumps({**good, "id": "b"}) + "\n[1, 2]\n")
    assert main(["report", str(run), "--plot", ""]) == 0
    captured = capsys.readouterr()
    assert f"{run}: skipped 2 corrupt lines (2, 4)" in captured.err
    assert "| run " in captured.out
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"id": "x", "method": "vanilla", "answer": 3.0}) + "\n")
    assert main(["report", str(broken), "--plot", ""]) == 2
    assert "has no 'output_tokens', 'compute_tokens', 'wall_s' field" in _one_error_line(capsys)


@pytest.mark.parametrize(
    ("prompts", "kwargs", "message"),
    [
        (42, {}, "prompts must be a string, a list of chat messages, or a list of these; got int"),
        ([{"content": "hi"}], {}, "prompt 1, message 1: 'role' is missing or not a string"),
        (["ok", [{"role": "user"}]], {}, "prompt 2, message 1: 'content' is missing or not a string"),
        ("hi", {"max_tokens": 0}, "max_tokens must be an integer >= 1"),
        ("hi", {"temperature": -0.5}, "temperature must be non-negative"),
        ("hi", {"max_in_flight": 0}, "max_in_flight must be >= 1"),
    ],
)
def test_api_input_is_checked_before_any_engine(prompts, kwargs, message):
    # a model path that does not exist: the checks must fire before the model is even looked at
    with pytest.raises(UserError) as info:
        generate(prompts, model="/nonexistent/model", **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_generate_on_no_prompts_starts_nothing():
    assert generate([], model="/nonexistent/model") == []


def test_recipe_types_and_relative_model_paths(tmp_path, monkeypatch):
    import yaml

    from reasonexit.training.config import load_recipe

    recipe = yaml.safe_load((ROOT / "rl" / "tiny_sgrpo.yaml").read_text())
    monkeypatch.chdir(tmp_path)  # the recipe's model path is relative to the recipe file, not here
    assert Path(load_recipe(ROOT / "rl" / "tiny_sgrpo.yaml").model) == ROOT / "reasonexit" / "assets" / "tiny_reasoner"
    for key, value, message in (
        ("max_steps", "lots", "'training.max_steps' must be int, got 'lots'"),
        ("learning_rate", "fast", "'training.learning_rate' must be float, got 'fast'"),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({**recipe, "model": TEST_MODEL, "training": {**recipe["training"], key: value}}))
        with pytest.raises(UserError, match=message):
            load_recipe(bad)


def test_recipe_dataset_files_beside_the_recipe_or_in_the_working_directory(tmp_path, monkeypatch):
    """A relative dataset file is found beside the recipe from any working directory; one that is
    not there stays relative to the working directory (where rl/README.md exports DeepMath)."""
    import yaml

    from reasonexit.training.config import load_recipe

    recipe = yaml.safe_load((ROOT / "rl" / "tiny_sgrpo.yaml").read_text())
    recipes = tmp_path / "recipes"
    (recipes / "data").mkdir(parents=True)
    (recipes / "data" / "mine.jsonl").write_text('{"problem": "1+1?", "answer": "2"}\n')
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    for name, expected in (
        ("data/mine.jsonl", str(recipes / "data" / "mine.jsonl")),  # beside the recipe
        ("data/elsewhere.jsonl", "data/elsewhere.jsonl"),  # not there: the working directory's
        ("gsm8k", "gsm8k"),  # a dataset name, not a file
    ):
        path = recipes / "r.yaml"
        path.write_text(yaml.safe_dump({**recipe, "model": TEST_MODEL, "dataset": {"name": name}}))
        assert load_recipe(path).dataset.name == expected


# ---------------------------------------------------------------------------- signals (subprocesses)
N_SIGNAL = 12


def _start(out: Path, limit: int = N_SIGNAL, stderr: Any = subprocess.PIPE) -> subprocess.Popen:
    """Start ``reasonexit eval`` on ``limit`` problems writing to ``out``, as a shell job would
    (a session of its own), its stderr to ``stderr`` (a pipe unless a file is given)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "2"}
    cmd = [
        sys.executable,
        "-m",
        "reasonexit.cli",
        "eval",
        *CLI_ENGINE_ARGS,
        "--limit",
        str(limit),
        "--max-tokens",
        "256",
        "--max-in-flight",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    # a session of its own, like a shell job: SIGINT to its process group is what Ctrl-C sends
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)


def _lines(out: Path) -> list[bytes]:
    return out.read_bytes().split(b"\n") if out.exists() else [b""]


def _row_count(out: Path) -> int:
    """Whole or torn rows written so far."""
    return len([ln for ln in _lines(out) if ln])


def _await_row(proc: subprocess.Popen, out: Path, before: int, started: dict[int, psutil.Process]) -> None:
    """Wait (at most 240 s) until the run writes a row beyond ``before`` or ends, recording every
    process it starts in ``started``."""
    me = psutil.Process(proc.pid)
    deadline = time.monotonic() + 240
    while _row_count(out) <= before and proc.poll() is None:
        assert time.monotonic() < deadline, "no row within 240 s"
        for c in me.children(recursive=True):
            started.setdefault(c.pid, c)
        time.sleep(0.1)


def _assert_none_left(started: dict[int, psutil.Process]) -> None:
    """Nothing a run started outlives it by more than 15 s (the watchdog covers SIGKILL: it gives the
    EngineCore 8 s to stop its workers and exit, then kills what is left)."""
    gone_by = time.monotonic() + 15
    alive = [p for p in started.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    while alive and time.monotonic() < gone_by:
        time.sleep(0.2)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    left = []
    for p in alive:
        with contextlib.suppress(psutil.Error):
            left.append((p.pid, p.status(), " ".join(p.cmdline())[:120]))
            p.kill()
    assert not alive, f"orphaned: {left}"


def _resume_gives_whole_unique_rows(out: Path, limit: int) -> None:
    """Re-run the same command: it completes, and the file holds ``limit`` whole, unique rows."""
    resume = _start(out, limit)
    _, err = resume.communicate(timeout=400)
    assert resume.returncode == 0, err[-2000:]
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a whole line
    rows = [json.loads(ln) for ln in lines[:-1]]  # every line parses: none torn
    assert len(rows) == limit and len({r["id"] for r in rows}) == limit


def _signal_rounds(out: Path, rng: random.Random) -> bool:
    """The three signal rounds of the test below; False when a run had written every row before
    its signal was sent (the test's process was held up; the premise of a mid-run signal failed)."""
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -9)):
        before = _row_count(out)
        proc = _start(out)
        me = psutil.Process(proc.pid)
        started: dict[int, psutil.Process] = {}
        _await_row(proc, out, before, started)
        time.sleep(rng.uniform(0.0, 0.5))
        for c in me.children(recursive=True):
            started.setdefault(c.pid, c)
        assert proc.poll() is None, "the run finished before the signal: make it longer"
        assert any("VLLM::" in " ".join(p.cmdline()) for p in started.values() if p.is_running())
        rows_at_signal = _row_count(out)
        signalled = time.monotonic()
        if sig == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(sig)
        out_text, err = proc.communicate(timeout=90)
        rows_after = _row_count(out)
        if rows_at_signal >= N_SIGNAL and proc.returncode == 0:
            return False
        assert proc.returncode == code, (
            f"{sig.name}: exit {proc.returncode}, {rows_at_signal} rows at the signal, {rows_after} "
            f"after, exited {time.monotonic() - signalled:.1f} s after it\n{err[-1500:]}{out_text[-500:]}"
        )
        if sig != signal.SIGKILL:
            assert "Traceback" not in err, err[-3000:]
            assert "leaked shared_memory" not in err and "force killing" not in err, err[-3000:]
            last = err.strip().splitlines()[-1]
            assert last.startswith("interrupted: ") and last.endswith(
                f"of {N_SIGNAL} done; re-run the same command to resume"
            ), last
        _assert_none_left(started)
    return True


def test_signals_end_runs_in_order_and_resumes_complete_them(tmp_path):
    """SIGTERM, then SIGINT (to the process group, as Ctrl-C), then SIGKILL, each at a random
    moment after a new row, each followed by a resume: exactly N unique rows, no torn line, and
    no process the runs started is left."""
    rng = random.Random(os.environ.get("REASONEXIT_CHAOS_SEED", "14"))
    for attempt in range(2):
        out = tmp_path / f"run{attempt}.jsonl"
        if _signal_rounds(out, rng):
            break
    else:
        pytest.fail("both attempts had every row written before a signal was sent: make the run longer")
    _resume_gives_whole_unique_rows(out, N_SIGNAL)


def test_a_dead_engine_ends_the_run_with_one_line_and_keeps_its_rows(tmp_path):
    """The engine process dies mid-run (SIGKILL): exit 1 with one line saying so and how far the
    run got, no traceback (vLLM's own for its front end is dropped), whole rows kept for a resume,
    and nothing the run started left behind."""
    out = tmp_path / "run.jsonl"
    proc = _start(out)
    me = psutil.Process(proc.pid)
    started: dict[int, psutil.Process] = {}
    _await_row(proc, out, 0, started)
    for c in me.children(recursive=True):
        started.setdefault(c.pid, c)
    cores = [p for p in started.values() if p.is_running() and "VLLM::EngineCore" in " ".join(p.cmdline())]
    assert cores and proc.poll() is None, "the run finished before the engine could be killed"
    for p in cores:
        p.kill()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    ours = [ln for ln in err.splitlines() if ln.startswith("reasonexit: error: ")]
    assert len(ours) == 1 and ours[0].startswith("reasonexit: error: the vLLM engine died; "), err[-2000:]
    assert ours[0].endswith(f"of {N_SIGNAL} done; re-run the same command to resume"), ours[0]
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(ln)["id"] for ln in lines[:-1])
    done = int(ours[0].split("died; ")[1].split(" of ")[0])
    assert 1 <= done == len(lines) - 1 < N_SIGNAL
    _assert_none_left(started)


def test_a_killed_run_writes_nothing_after_it_ends_and_leaves_no_process(tmp_path):
    """SIGKILL of the CLI mid-run (after its first row): once it is dead, nothing more reaches its
    stderr (the terminal of a shell job) and every process it started ends (the watchdog stops the
    EngineCore, which stops its worker; stopping the worker first made the EngineCore dump tens of
    KB there); the same command then resumes the run to whole, unique rows."""
    limit = 4
    out, err_path = tmp_path / "run.jsonl", tmp_path / "stderr.txt"
    with err_path.open("wb") as err_file:
        proc = _start(out, limit, stderr=err_file)
    me = psutil.Process(proc.pid)
    started: dict[int, psutil.Process] = {}
    _await_row(proc, out, 0, started)
    for c in me.children(recursive=True):
        started.setdefault(c.pid, c)
    names = [" ".join(p.cmdline()) for p in started.values() if p.is_running()]
    assert proc.poll() is None, "the run finished before the kill: make it longer"
    assert any("VLLM::EngineCore" in n for n in names) and any("VLLM::Worker" in n for n in names), names
    proc.kill()
    proc.wait()
    at_kill = err_path.stat().st_size
    # every process that holds the run's stderr is one it started: once they are all gone, nothing
    # more can be written (the watchdog, the last, exits a few seconds after the kill)
    _assert_none_left(started)
    after = err_path.read_bytes()[at_kill:]
    shown = after[:3000].decode(errors="replace")
    assert after == b"", f"{len(after)} bytes written to stderr after the kill:\n{shown}"
    _resume_gives_whole_unique_rows(out, limit)
