"""A grading worker process (see :mod:`reasonexit.data.grading`): one JSON request a line in, one verdict out.

Run by path, not as ``-m reasonexit...``: importing the package would import vLLM. It loads the
sibling ``answers.py`` (standard library only) and grades on its main thread, where math_verify's
own timeout works. It exits at the end of its input, or when its parent process is gone.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path


def _load_answers():
    spec = importlib.util.spec_from_file_location("_reasonexit_answers", Path(__file__).with_name("answers.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _watch_parent() -> None:
    """Exit when the parent dies (a forked child may hold our stdin open, so EOF may never come)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def main() -> int:
    """Serve grading requests until the end of input."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # nothing but verdicts on the pipe
    _watch_parent()
    logging.disable(logging.WARNING)
    answers = _load_answers()
    try:
        import math_verify  # noqa: F401 - imported now, not during the first timed call
    except ImportError:
        pass
    for line in sys.stdin:
        try:
            pred, gold, kind = json.loads(line)
            verdict = bool(answers.grade(pred, gold, kind))
        except Exception:  # noqa: BLE001 - a bad request grades False; the worker stays up
            verdict = False
        out.write(json.dumps(verdict) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
