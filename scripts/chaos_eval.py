"""Chaos test of `reasonexit eval`: kill runs with random signals at random times, resume, check.

Each round starts a run into a fresh result file, as a user would (``python -m reasonexit.cli
eval ...`` in a session of its own), sends it a random signal at a random moment (SIGINT to its
process group, as Ctrl-C does; SIGTERM or SIGKILL to the process, as ``kill`` does), then runs
the same command again to resume and finish. It records:

- the killed run's exit status, the time it took to exit, and the last line it printed;
- engine processes (every descendant of the run seen while it ran) still alive 10 s after the
  run exited: *orphans* (they are killed afterwards so the next round starts clean);
- after the resume: rows in the file, unique problem ids, torn or unparsable lines, and whether
  every problem has exactly one result row.

Usage::

    python scripts/chaos_eval.py --rounds 20 --limit 16 --max-tokens 256

It ends with a markdown table, one line a round, and a total line. Exit status 0 when every round
ended with N unique rows, no torn line and no orphan.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
ORPHAN_WAIT_S = 10.0


@dataclass
class Round:
    """What one round observed."""

    index: int
    signal: str
    kill_at_s: float
    rows_at_kill: int
    exit_code: int | None
    exit_s: float
    orphans: int
    last_line: str
    rows: int
    unique: int
    torn: int
    resume_code: int

    def ok(self, n: int) -> bool:
        """N unique rows, one row each, no torn line, no orphan, and a clean resume."""
        return self.unique == n and self.rows == n and self.torn == 0 and self.orphans == 0 and self.resume_code == 0


def eval_command(out: Path, args: argparse.Namespace) -> list[str]:
    """The `reasonexit eval` command line of every run of the script."""
    return [
        sys.executable,
        "-m",
        "reasonexit.cli",
        "eval",
        "--dtype",
        "float32",
        "--max-model-len",
        "2048",
        "--limit",
        str(args.limit),
        "--max-tokens",
        str(args.max_tokens),
        "--max-in-flight",
        str(args.max_in_flight),
        "--out",
        str(out),
        "--quiet",
    ]


def run_env() -> dict[str, str]:
    """Environment: this checkout's reasonexit first on the path, a small CPU KV cache."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    return env


def count_lines(path: Path) -> tuple[int, set[str], int]:
    """(rows, unique ids, torn or unparsable lines) of a result file."""
    if not path.exists():
        return 0, set(), 0
    rows, ids, torn = 0, set(), 0
    for raw in path.read_bytes().split(b"\n"):  # a torn last line has no newline: it is the last piece
        if not raw:
            continue
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            torn += 1
            continue
        if row.get("exit_reason") != "error":
            rows += 1
            ids.add(str(row.get("id")))
    return rows, ids, torn


def kill_run(cmd: list[str], out: Path, sig: str, kill_at: float, log) -> tuple[int | None, float, int, int]:  # noqa: ANN001
    """Start a run, send ``sig`` after ``kill_at`` seconds; return (exit code, seconds to exit,
    rows written when the signal was sent, orphans)."""
    proc = subprocess.Popen(cmd, env=run_env(), stdout=log, stderr=log, start_new_session=True)
    me = psutil.Process(proc.pid)
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + kill_at
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            for c in me.children(recursive=True):
                seen.setdefault(c.pid, c)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    rows_at_kill = count_lines(out)[0]
    if proc.poll() is None:
        if sig == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)  # what a Ctrl-C at the terminal does
        else:
            proc.send_signal(SIGNALS[sig])
    t0 = time.monotonic()
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    exit_s = time.monotonic() - t0
    gone_by = time.monotonic() + ORPHAN_WAIT_S
    alive = [p for p in seen.values() if _running(p)]
    while alive and time.monotonic() < gone_by:
        time.sleep(0.25)
        alive = [p for p in alive if _running(p)]
    for p in alive:  # clean up for the next round (they are counted as orphans)
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return code, exit_s, rows_at_kill, len(alive)


def _last_line(log: Path) -> str:
    """The line reasonexit printed last about the run ending ('' if none, e.g. after SIGKILL)."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith(("interrupted", "reasonexit:"))]
    return lines[-1] if lines else ""


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def main() -> int:
    """Run the rounds and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--limit", type=int, default=16, help="problems a run")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--max-in-flight", type=int, default=2, help="2: rows arrive one by one over the run")
    ap.add_argument(
        "--max-kill-s",
        type=float,
        default=60.0,
        help="signal at a uniform time in [1, this] seconds (engine start is ~30-40 s on 2 CPU cores)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--signals", default="SIGINT,SIGTERM,SIGKILL", help="comma-separated signals to draw from")
    ap.add_argument("--workdir", default=None, help="where result files and logs go (default: a temp dir)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    rounds: list[Round] = []
    for i in range(1, args.rounds + 1):
        sig = rng.choice(args.signals.split(","))
        kill_at = rng.uniform(1.0, args.max_kill_s)
        out = work / f"round{i:02d}.jsonl"
        out.unlink(missing_ok=True)
        cmd = eval_command(out, args)
        killed_log = work / f"round{i:02d}.killed.log"
        with killed_log.open("w") as log:
            code, exit_s, at_kill, orphans = kill_run(cmd, out, sig, kill_at, log)
        last = _last_line(killed_log)
        with (work / f"round{i:02d}.resume.log").open("w") as log:
            resume = subprocess.run(cmd, env=run_env(), stdout=log, stderr=log, start_new_session=True)
        rows, ids, torn = count_lines(out)
        r = Round(i, sig, kill_at, at_kill, code, exit_s, orphans, last, rows, len(ids), torn, resume.returncode)
        rounds.append(r)
        print(
            f"round {i}: {sig} at {kill_at:.1f}s ({at_kill} rows) -> exit {code} in {exit_s:.1f}s, "
            f"{orphans} orphans; after resume {rows} rows, {len(ids)} unique, {torn} torn",
            file=sys.stderr,
            flush=True,
        )
    print(f"\n{args.rounds} rounds, --limit {args.limit} --max-tokens {args.max_tokens} (logs: {work})\n")
    print(
        "| round | signal | sent at (s) | rows then | exit | exit took (s) | last line | orphans "
        "| rows after resume | unique | torn |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rounds:
        print(
            f"| {r.index} | {r.signal} | {r.kill_at_s:.1f} | {r.rows_at_kill} | {r.exit_code} | {r.exit_s:.1f} | "
            f"{r.last_line or '-'} | {r.orphans} | {r.rows} | {r.unique} | {r.torn} |"
        )
    good = sum(r.ok(args.limit) for r in rounds)
    print(
        f"\n{good} of {len(rounds)} rounds ended with exactly {args.limit} unique rows, no torn line and no "
        f"orphaned process; orphans in all: {sum(r.orphans for r in rounds)}; torn lines: {sum(r.torn for r in rounds)}"
    )
    return 0 if good == len(rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
