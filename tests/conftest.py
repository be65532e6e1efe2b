"""Shared fixtures: one real vLLM engine (CPU) on the tiny model for the whole test session."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from reasonexit.engine import DEFAULT_MODEL, EngineConfig, get_session, reserve_spare_core  # noqa: E402

#: The model under test: the bundled testbed unless REASONEXIT_TEST_MODEL names another.
TEST_MODEL = os.environ.get("REASONEXIT_TEST_MODEL", DEFAULT_MODEL)

#: Engine settings shared by the fixture and by CLI calls made in-process (same key, same engine).
TEST_ENGINE = EngineConfig(model=TEST_MODEL, dtype="float32", max_model_len=2048, seed=0, step_rules=("budget",))
CLI_ENGINE_ARGS = ["--model", TEST_MODEL, "--dtype", "float32", "--max-model-len", "2048", "--seed", "0"]

#: The repository, the real benchmark files beside it, and this suite's fixture files.
ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT.parent / "shared" / "benchmarks"
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def session():
    """The process-wide engine session, started once."""
    # Started before any FlashThink is built: leave vLLM's spare core free for its verifier engine,
    # as a FlashThink run does (see reasonexit.engine.platform.cpu_binding).
    reserve_spare_core()
    s = get_session(TEST_ENGINE)
    s.start()
    yield s
    s.close()


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def free_port() -> int:
    """A TCP port free on the loopback address now (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
