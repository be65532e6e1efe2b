"""The command line: errors are one line with no traceback and no file; eval writes, resumes, reports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import BENCHMARKS, CLI_ENGINE_ARGS, TEST_MODEL

from reasonexit.cli import main

RUN_FIELDS = {
    "id",
    "problem",
    "gold",
    "answer",
    "correct",
    "method",
    "params",
    "prompt_tokens",
    "output_tokens",
    "compute_tokens",
    "thinking_tokens",
    "wall_s",
    "exit_reason",
}


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reasonexit.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "no_such_set"], "unknown dataset"),
        (["--method", "no_such_method"], "unknown method"),
        (["--method", "budget", "--bogus", "3"], "unknown option --bogus"),
        (["--method", "budget", "--max-thinking-tokens", "many"], "must be int"),
        (["--model", "/nonexistent/model"], "model not found"),
        (["--limit", "0"], "--limit must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_no_file(tmp_path, args, message):
    out = tmp_path / "run.jsonl"
    proc = run_cli("eval", "--out", str(out), "--quiet", *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("reasonexit: error:")]
    assert len(err_lines) == 1 and message in err_lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_rows_missing_answer_field(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?"}\n')
    proc = run_cli("eval", "--dataset", str(data), "--out", str(tmp_path / "o.jsonl"), "--quiet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "answer" in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.slow
def test_prompt_longer_than_context_before_engine_start(tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"problem": "count " * 6000, "answer": "1"}) + "\n")
    out = tmp_path / "o.jsonl"
    proc = run_cli(
        "eval", "--model", TEST_MODEL, "--max-model-len", "1024", "--dataset", str(data), "--out", str(out), "--quiet"
    )
    assert proc.returncode == 2 and "longer than the model context" in proc.stderr
    assert not out.exists()


def test_eval_writes_rows_resumes_and_reports(session, tmp_path, capsys):
    out = tmp_path / "run.jsonl"
    args = ["eval", *CLI_ENGINE_ARGS, "--limit", "4", "--max-tokens", "160", "--out", str(out), "--quiet"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and RUN_FIELDS <= set(rows[0])
    assert len({r["id"] for r in rows}) == 4
    # a killed run leaves a torn line: resuming cuts it and redoes only missing problems
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:20])
    assert main([*args[:-3], "--limit", "5", "--out", str(out), "--quiet"]) == 0
    rows2 = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows2) == 5
    assert [r["id"] for r in rows2[:2]] == [r["id"] for r in rows[:2]]
    assert sorted(r["id"] for r in rows2) == sorted({*[r["id"] for r in rows], rows2[-1]["id"]})
    capsys.readouterr()
    # a different method into the same file is refused
    assert main(["eval", *CLI_ENGINE_ARGS, "--method", "budget", "--limit", "2", "--out", str(out), "--quiet"]) == 2
    png = tmp_path / "plot.png"
    assert main(["report", str(out), "--plot", str(png)]) == 0
    table = capsys.readouterr().out
    assert "| run " in table and "accuracy" in table and png.stat().st_size > 1000


def test_gsm8k_file_runs_through_eval(session, tmp_path):
    gsm = BENCHMARKS / "gsm8k_test.jsonl"
    if not gsm.exists():
        pytest.skip("shared benchmarks not present")
    out = tmp_path / "gsm.jsonl"
    assert (
        main(
            [
                "eval",
                *CLI_ENGINE_ARGS,
                "--dataset",
                str(gsm),
                "--limit",
                "5",
                "--max-tokens",
                "64",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and all(r["gold"] and "####" not in r["gold"] for r in rows)
