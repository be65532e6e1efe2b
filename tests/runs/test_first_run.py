"""A newcomer's first run: the README API example, help for every option, and model-card metrics."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import CLI_ENGINE_ARGS, ROOT

from reasonexit.cli import main
from reasonexit.engine import EngineConfig
from reasonexit.engine.platform import SMALL_MACHINE_CORES
from reasonexit.methods import method_class, method_names
from reasonexit.methods.base import Decoding
from reasonexit.options import flag_of, help_of
from reasonexit.runs.options import EvalOptions
from reasonexit.runs.report import report


def _readme_api_example() -> str:
    """The README's Python API example, as written there (a fenced python block)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _fresh_env() -> dict[str, str]:
    """The environment a new user has: none of the variables the test suite sets."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "REASONEXIT_", "TOKENIZERS_"))}


@pytest.mark.slow
def test_readme_api_example_runs_as_written_and_unguarded_gives_one_line(tmp_path):
    code = _readme_api_example()
    assert 'if __name__ == "__main__":' in code
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_fresh_env(), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip(), proc.stderr[-2000:]
    answer, reason, *_ = proc.stdout.strip().splitlines()[-1].split()
    assert reason in ("confident", "eos", "length", "budget")
    # without the guard: one line naming the cause, non-zero exit, nothing else on stderr
    head, body = re.split(r'^if __name__ == "__main__":.*\n', code, maxsplit=1, flags=re.M)
    unguarded = head + "\n".join(line[4:] for line in body.splitlines())
    bad = tmp_path / "unguarded.py"
    bad.write_text(unguarded)
    proc = subprocess.run([sys.executable, str(bad)], cwd=tmp_path, env=_fresh_env(), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "__main__" in lines[0] and "unguarded.py" in lines[0], proc.stderr


def _help_text(*argv: str, capsys) -> str:
    try:
        main(list(argv))
    except SystemExit as exc:
        assert exc.code == 0
    return _squash(capsys.readouterr().out)


def _squash(text: str) -> str:
    """Text without whitespace: argparse wraps help lines (also after hyphens)."""
    return "".join(text.split())


def test_every_option_appears_in_help_with_its_help_text(capsys):
    common = _help_text("eval", "--help", capsys=capsys)
    for cls, skip in ((EvalOptions, ()), (Decoding, ()), (EngineConfig, ("seed",))):
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            assert help_of(f), f"{cls.__name__}.{f.name} has no help text"
            assert flag_of(f) in common and _squash(help_of(f)) in common, f.name
    for name in method_names():
        text = _help_text("eval", "--method", name, "--help", capsys=capsys)
        for f in dataclasses.fields(method_class(name).Params):
            assert help_of(f), f"{name}: {f.name} has no help text"
            assert flag_of(f) in text and _squash(help_of(f)) in text, f"{name}: {f.name}"


def test_method_options_do_not_shadow_run_engine_or_decoding_flags():
    taken = {flag_of(f) for cls in (EvalOptions, Decoding, EngineConfig) for f in dataclasses.fields(cls)}
    for name in method_names():
        clash = taken & {flag_of(f) for f in dataclasses.fields(method_class(name).Params)}
        assert not clash, f"method {name} options {clash} would be read as run options"


@pytest.mark.slow
def test_samples_report_model_card_metrics_and_resume_per_sample(session, tmp_path, capsys):
    out = tmp_path / "k4.jsonl"
    args = ["eval", *CLI_ENGINE_ARGS, "--limit", "32", "--samples", "4", "--temperature", "0.6", "--top-p", "0.95",
            "--max-tokens", "384", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    table = capsys.readouterr().out
    for col in ("pass@1", "pass@1_se", "cons@4", "pass@4", "overlong"):
        assert f" {col} " in table
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 128 and len({(r["problem_id"], r["sample"]) for r in rows}) == 128
    per = {}
    for r in rows:
        per.setdefault(r["problem_id"], set()).add(r["answer"])
    assert any(len(a) > 1 for a in per.values()), "samples at temperature 0.6 should not all agree"

    # a run killed mid-way: some samples missing and a torn last line; the resume redoes exactly those
    keep = rows[:70]
    out.write_text("".join(json.dumps(r) + "\n" for r in keep) + json.dumps(rows[70])[:40])
    assert main(args) == 0
    capsys.readouterr()
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(again) == 128 and len({(r["problem_id"], r["sample"]) for r in again}) == 128
    assert again[:70] == keep
    # sampling is seeded per sample: the redone samples are the ones the first run drew
    first = {r["id"]: r["text"] for r in rows}
    assert all(first[r["id"]] == r["text"] for r in again[70:])

    table, _ = report([str(out)], None)
    for col in ("pass@1", "cons@4", "pass@4", "overlong"):
        assert col in table


@pytest.mark.slow
def test_fresh_eval_is_quiet_before_the_progress_bar(tmp_path):
    out = tmp_path / "l4.jsonl"
    proc = subprocess.run([sys.executable, "-m", "reasonexit.cli", "eval", "--limit", "4", "--max-tokens", "64",
                           "--out", str(out)], cwd=tmp_path, env=_fresh_env(), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    err = proc.stderr.replace("\r", "\n")
    before = err[: err.index("problems:")].splitlines()
    assert len([ln for ln in before if ln.strip()]) <= 5, before
    assert "INFO" not in proc.stderr and "WARNING" not in proc.stderr
    # nor torch's glog-style lines from the engine processes ("W1123 15:15:56.738 ... Triton not available")
    assert not re.search(r"(^|[\r\n|\]])[IWEF]\d{4} \d\d:\d\d:\d\d", proc.stderr), proc.stderr[-2000:]
    assert "Triton" not in proc.stderr


def _report_freeze(queue) -> None:  # noqa: ANN001 - a multiprocessing queue
    import reasonexit._exit as quick_exit

    queue.put(quick_exit._registered)


def test_engine_processes_skip_the_final_garbage_collection():
    """vLLM's engine processes (spawned, named like EngineCore) freeze the collector at exit, which
    cut seconds off every engine shutdown; the main process does so once it holds an engine session."""
    import multiprocessing as mp

    import reasonexit._exit as quick_exit

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_report_freeze, args=(queue,), name="EngineCore_DP0")
    child.start()
    assert queue.get(timeout=120) is True
    child.join(timeout=60)
    assert child.exitcode == 0
    from reasonexit.engine import EngineSession

    EngineSession(EngineConfig()).close()  # the tokenizer only: the engine starts on first use
    assert quick_exit._registered


ENGINE_RELEASED = """
import gc
import os
import sys

from reasonexit.engine import EngineConfig, EngineSession

if __name__ == "__main__":
    assert "vllm.engine.arg_utils" not in sys.modules  # vLLM's first import happens in the engine start
    session = EngineSession(EngineConfig())
    session.start()
    import psutil

    workers = [p for p in psutil.Process().children(recursive=True) if p.name() == "VLLM::Worker"]
    # the model threads: vLLM binds each of the worker's OpenMP threads to one core of the binding
    cores = {c for p in workers for t in p.threads() for c in os.sched_getaffinity(t.id)}
    print("worker cores:", sorted(cores), "binding:", session.cpu_binding)
    session.close()
    gc.collect()
    from vllm.v1.engine.async_llm import AsyncLLM

    print("live engines:", sum(isinstance(o, AsyncLLM) for o in gc.get_objects()))
"""


@pytest.mark.slow
def test_closed_engine_is_released_and_exit_is_silent(tmp_path):
    """A closed session's AsyncLLM is freed at once. It used to stay alive (held by a frame that a
    vLLM import error's traceback keeps) until interpreter exit, where its __del__ failed noisily."""
    script = tmp_path / "release.py"
    script.write_text(ENGINE_RELEASED)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("live engines: 0"), proc.stdout
    # A lone engine on a small machine binds its model threads to every core (see engine.cpu_binding).
    cores = sorted(os.sched_getaffinity(0))
    if 1 < len(cores) <= SMALL_MACHINE_CORES and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        assert f"worker cores: {cores} binding: {','.join(map(str, cores))}" in proc.stdout, proc.stdout
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
