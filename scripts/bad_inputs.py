"""Run `reasonexit` on bad inputs, as a user would, and print what each gets: a markdown table of
input, the line printed, the exit status, and whether a result file appeared or a file changed.

    python scripts/bad_inputs.py > bad_inputs.md

Every case runs in a fresh temporary directory with the bundled tiny model; none of them starts
the engine (each fails before), so the whole table takes a few minutes of vLLM imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL = ["eval", "--limit", "2", "--quiet"]


def cases(tmp: Path) -> list[tuple[str, list[str]]]:
    """(what, argv) pairs; files the cases need are created in ``tmp``."""
    (tmp / "notes.txt").write_text("not a directory\n")
    data = tmp / "mine.jsonl"
    data.write_text("".join(json.dumps({"problem": f"{i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(3)))
    (tmp / "no_answer.jsonl").write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?"}\n')
    (tmp / "long.jsonl").write_text(json.dumps({"problem": "count " * 6000, "answer": "1"}) + "\n")
    good = {"id": "a", "method": "vanilla", "params": {}, "output_tokens": 5, "compute_tokens": 5, "wall_s": 0.1}
    (tmp / "damaged.jsonl").write_text(json.dumps(good) + "\n{not json\n" + json.dumps({**good, "id": "b"}) + "\n")
    (tmp / "foreign.jsonl").write_text(json.dumps({"id": "x", "method": "vanilla", "answer": 3}) + "\n")
    recipe = (ROOT / "rl" / "tiny_sgrpo.yaml").read_text()
    (tmp / "lots.yaml").write_text(recipe.replace("max_steps: ", "max_steps: lots  # ", 1))
    (tmp / "fast.yaml").write_text(recipe.replace("learning_rate: ", "learning_rate: fast  # ", 1))
    (tmp / "lots.yaml").write_text((tmp / "lots.yaml").read_text().replace("../reasonexit", str(ROOT / "reasonexit")))
    (tmp / "fast.yaml").write_text((tmp / "fast.yaml").read_text().replace("../reasonexit", str(ROOT / "reasonexit")))
    return [
        ("--temperature -1", [*EVAL, "--temperature", "-1"]),
        ("--top-p 1.5", [*EVAL, "--top-p", "1.5"]),
        ("--max-tokens 0", [*EVAL, "--max-tokens", "0"]),
        ("--limit 0", [*EVAL[:1], "--limit", "0", "--quiet"]),
        ("--dtype bogus", [*EVAL, "--dtype", "bogus"]),
        ("--max-model-len 1000000", [*EVAL, "--max-model-len", "1000000"]),
        ("--max-in-flight 0", [*EVAL, "--max-in-flight", "0"]),
        ("--method no_such_method", [*EVAL, "--method", "no_such_method"]),
        ("--method budget --bogus 3", [*EVAL, "--method", "budget", "--bogus", "3"]),
        ("--method budget --max-thinking-tokens many", [*EVAL, "--method", "budget", "--max-thinking-tokens", "many"]),
        ("--method deer --no-thinking", [*EVAL, "--method", "deer", "--no-thinking"]),
        ("--think-start '<think>' (no --think-end)", [*EVAL, "--think-start", "<think>"]),
        ("--model /nonexistent/model", [*EVAL, "--model", "/nonexistent/model"]),
        ("--dataset no_such_set", [*EVAL, "--dataset", "no_such_set"]),
        ("--dataset rows without an answer", [*EVAL, "--dataset", "no_answer.jsonl"]),
        ("a prompt longer than the context", [*EVAL, "--dataset", "long.jsonl", "--max-model-len", "1024"]),
        ("--out . (a directory)", [*EVAL, "--out", "."]),
        ("--out notes.txt/run.jsonl (parent is a file)", [*EVAL, "--out", "notes.txt/run.jsonl"]),
        ("--out /proc/run.jsonl", [*EVAL, "--out", "/proc/run.jsonl"]),
        ("--out mine.jsonl (a dataset, not a run file)", [*EVAL, "--dataset", "mine.jsonl", "--out", "mine.jsonl"]),
        ("report missing.jsonl", ["report", "missing.jsonl", "--plot", ""]),
        ("report damaged.jsonl (a corrupt line)", ["report", "damaged.jsonl", "--plot", ""]),
        ("report foreign.jsonl (rows without result fields)", ["report", "foreign.jsonl", "--plot", ""]),
        ("train sgrpo, recipe with max_steps: lots", ["train", "sgrpo", "--config", "lots.yaml"]),
        ("train sgrpo, recipe with learning_rate: fast", ["train", "sgrpo", "--config", "fast.yaml"]),
    ]


def snapshot(tmp: Path) -> dict[str, bytes]:
    """Contents of every file under ``tmp`` (to see what a case created or changed)."""
    return {str(p.relative_to(tmp)): p.read_bytes() for p in tmp.rglob("*") if p.is_file()}


def main() -> int:
    """Run every case and print the table."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    print("| input | what it prints | exit | files |")
    print("|---|---|---|---|")
    listing = Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    for what, argv in cases(listing):
        tmp = Path(tempfile.mkdtemp(prefix="bad-input-"))
        cases(tmp)
        before = snapshot(tmp)
        proc = subprocess.run(
            [sys.executable, "-m", "reasonexit.cli", *argv], cwd=tmp, env=env, capture_output=True, text=True
        )
        after = snapshot(tmp)
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("reasonexit:", "interrupted"))]
        shown = " / ".join(lines) if lines else (proc.stderr.strip().splitlines() or [""])[-1]
        if "Traceback" in proc.stderr:
            shown += " (TRACEBACK)"
        new = sorted(set(after) - set(before))
        changed = sorted(k for k in before if k in after and before[k] != after[k])
        files = ", ".join([*(f"created {n}" for n in new), *(f"changed {n}" for n in changed)])
        files = files or "none created or changed"
        shown = shown.replace(str(tmp) + "/", "").replace(str(tmp), ".").replace("|", "\\|")
        print(f"| `{what}` | `{shown}` | {proc.returncode} | {files} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
