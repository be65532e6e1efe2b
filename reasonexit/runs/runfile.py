"""Run files: one JSON line per solved problem, appended as each finishes, so a run can resume.

A run file belongs to one run: every row carries the run's signature (model, dataset, method and
its parameters, decoding), and a file holding another run is refused. Resuming skips the
problems whose newest row is a result and runs again those whose newest row is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..methods.base import ExitReason

if TYPE_CHECKING:
    from ..methods.base import Decoding, Method


def run_signature(
    model: str, dataset: str, method: Method, decoding: Decoding, samples: int = 1
) -> dict[str, Any]:
    """What must match for a run file to be resumed."""
    return {
        # only when several, so single-sample run files written before --samples existed still resume
        **({"samples": samples} if samples > 1 else {}),
        "model": model,
        "dataset": dataset,
        "method": method.name,
        "params": method.describe(),
        "decoding": {
            "temperature": decoding.temperature,
            "top_p": decoding.top_p,
            "max_tokens": decoding.max_tokens,
            "seed": decoding.seed,
            # only when set, so run files written before top_k existed still resume
            **({"top_k": decoding.top_k} if decoding.top_k != -1 else {}),
        },
    }


def default_run_path(signature: dict[str, Any]) -> Path:
    """``runs/<dataset>-<method>-<hash>.jsonl``: the same command resumes the same file."""
    digest = hashlib.sha1(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:8]
    stem = Path(signature["dataset"]).stem
    return Path("runs") / f"{stem}-{signature['method']}-{digest}.jsonl"


class OpenRun:
    """A run file checked for this run (:func:`open_run`): its path, signature and existing rows."""

    def __init__(self, path: Path, signature: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        self.path = path
        self.signature = signature
        self.rows = rows


def open_run(path: str | os.PathLike, signature: dict[str, Any]) -> OpenRun:
    """Check ``path`` as the run file of the run ``signature`` and read the rows it already holds.

    Raises a one-line :class:`UserError` (nothing is created or changed) when the path is not
    usable (:func:`check_run_file`) or when a row belongs to another run.
    """
    check_run_file(path)
    rows = read_run(path)
    for n, row in enumerate(rows, start=1):
        old = row.get("run", {})
        if old and old != signature:
            raise UserError(
                f"{path} holds a different run (row {n}: method/params/model/dataset/decoding differ); "
                "choose another --out"
            )
    return OpenRun(Path(path), signature, rows)


def read_run(path: str | os.PathLike, bad_lines: list[int] | None = None) -> list[dict[str, Any]]:
    """All rows of a run file, in file order (a problem re-run after an error has several rows;
    :func:`latest_rows` keeps the newest).

    A torn last line (from a killed run) is ignored. Lines that are not a JSON object are skipped;
    their 1-based line numbers are appended to ``bad_lines`` when it is given.
    """
    rows: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return rows
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                break  # torn tail
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                row = None
            if isinstance(row, dict):
                rows.append(row)
            elif bad_lines is not None and raw.strip():
                bad_lines.append(lineno)
    return rows


def latest_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest row of each problem id, in the order ids first appeared (rows without an id are kept)."""
    latest: dict[Any, dict[str, Any]] = {}
    for n, r in enumerate(rows):
        key = ("id", str(r["id"])) if "id" in r else ("row", n)
        latest.pop(key, None)  # re-insert: a re-run problem moves to where its newest row is
        latest[key] = r
    return list(latest.values())


def check_run_file(path: str | os.PathLike) -> None:
    """Refuse an ``--out`` that reasonexit must not write into, before anything is started.

    Usable: a missing file (created when the first row is written) whose parent is, or can be, a
    directory; or an existing reasonexit run file (every complete line a JSON object with a
    ``run`` signature). Anything else (a directory, a dataset, a file that cannot be written)
    raises a one-line :class:`UserError` and is left untouched.
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"--out {path} is a directory; give a .jsonl file path")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {path}: {parent} is not a directory")
    if not p.exists():
        # Try it: permission bits do not tell (root passes os.access; /proc refuses anyway). A
        # hidden probe file is created and removed at once; the result file itself is not created.
        try:
            fd, probe = tempfile.mkstemp(prefix=".reasonexit-probe-", dir=parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise UserError(f"--out {path}: cannot create files in {parent} ({exc.strerror or exc})") from None
        return
    if not p.is_file():
        raise UserError(f"--out {path} is not a regular file")
    try:
        with p.open("ab"):  # opening for append changes nothing in the file
            pass
    except OSError as exc:
        raise UserError(f"--out {path} is not writable ({exc.strerror or exc})") from None
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                break  # a torn last line of a killed run is cut when the run resumes
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("run"), dict):
                raise UserError(
                    f"--out {path} is not a reasonexit run file (line {lineno} is not a result row); "
                    "it was left unchanged: choose another --out"
                )


class RunWriter:
    """Appends one JSON line per result, each written with a single ``write``.

    The file is opened (and created) when the first row is written, so a run that stops before
    its first result leaves no file behind.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self.written = 0

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_run_file(self.path)
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, row: dict[str, Any]) -> None:
        """Append one row as a whole line."""
        if self._fd is None:
            self._fd = self._open()
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        os.write(self._fd, line)
        self.written += 1

    def close(self) -> None:
        """Flush to disk and close (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.fsync(fd)
            os.close(fd)


def repair_run_file(path: str | os.PathLike) -> None:
    """Cut a torn last line off a run file so appends start on a fresh line."""
    p = Path(path)
    if not p.exists():
        return
    data = p.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with p.open("r+b") as fh:
            fh.truncate(cut)


def done_ids(rows: Iterable[dict[str, Any]]) -> set[str]:
    """Ids whose newest row is a result (a problem whose newest row is an error is run again)."""
    return {str(r["id"]) for r in latest_rows(rows) if "id" in r and r.get("exit_reason") != ExitReason.ERROR}
