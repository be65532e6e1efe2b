"""Record DEER's decisions on 128 testbed problems into ``deer_reference.json``.

    PYTHONPATH=$PWD python tests/data/record_deer_reference.py [--check]

The fixture was recorded with DEER as it was before it moved onto the shared early-exit
controller (commit db278a4); ``tests/test_early_exit.py`` checks that today's DEER reproduces it.
Settings: the test engine (float32, max_model_len 2048, seed 0), greedy, max_tokens 1024,
threshold 0.95, both the branch-parallel and the sequential mode. A second, stricter setting
(threshold 0.9999, max_tokens 384, budget_ratio 0.5) also exercises refused probes and budget
exits. ``--check`` compares a fresh run with the stored file instead of writing it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "deer_reference.json"
N = 128
#: name -> (max_tokens, DEER options)
SETTINGS = {
    "default": (1024, {"threshold": 0.95}),
    "strict": (384, {"threshold": 0.9999, "budget_ratio": 0.5}),
}
MODES = {"parallel": False, "sequential": True}


def record(session) -> dict:
    """DEER's exit position, exit reason and answer per problem, in both modes."""
    from reasonexit.data.datasets import load_problems
    from reasonexit.methods import Decoding, make_method
    from reasonexit.runs.runner import jobs_for, solve_all

    jobs = jobs_for(session, load_problems("synthetic", limit=N))
    out: dict = {"n": N, "ids": [j.id for j in jobs], "settings": {}}
    for name, (max_tokens, opts) in SETTINGS.items():
        dec = Decoding(max_tokens=max_tokens, seed=0)
        entry: dict = {"max_tokens": max_tokens, "options": opts}
        for mode, sequential in MODES.items():
            method = make_method("deer", {**opts, "sequential": sequential})
            results = session.run(solve_all(session, method, jobs, dec, 1024))
            entry[mode] = [[r.info.get("exit_pos"), r.exit_reason, r.answer] for r in results]
        out["settings"][name] = entry
    return out


def main() -> int:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    sys.path.insert(0, str(HERE.parent))
    from conftest import TEST_ENGINE

    from reasonexit.engine import get_session

    session = get_session(TEST_ENGINE)
    data = record(session)
    session.close()
    if "--check" in sys.argv:
        ref = json.loads(OUT.read_text())
        for name in SETTINGS:
            for mode in MODES:
                got, want = data["settings"][name][mode], ref["settings"][name][mode]
                same = sum(a == b for a, b in zip(want, got, strict=True))
                print(f"{name} {mode}: {same}/{N} identical")
        return 0
    OUT.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
