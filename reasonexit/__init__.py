"""reasonexit: stop reasoning models from overthinking.

Early-exit methods on a shared vLLM engine (``vanilla`` and ``budget`` baselines; DEER,
FlashThink and First Finish Search plug into the same method interface) and S-GRPO training on
TRL. Start with :func:`generate`, or ``reasonexit eval`` on the command line.
"""

from .api import agenerate, evaluate, generate
from .engine import DEFAULT_MODEL, EngineConfig, EngineSession, get_session
from .errors import UserError
from .results import Result

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "EngineConfig",
    "EngineSession",
    "Result",
    "UserError",
    "agenerate",
    "evaluate",
    "generate",
    "get_session",
]
