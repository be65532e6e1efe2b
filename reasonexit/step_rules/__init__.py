"""Per-step token rules: plain logic, with one adapter per vLLM model runner.

vLLM 0.32 has two logits-processor interfaces. The V1 model runner (the CPU build, and the GPU
build when Model Runner V2 cannot run) loads subclasses of
``vllm.v1.sample.logits_processor.LogitsProcessor``; Model Runner V2 (the CUDA build's default)
loads subclasses of ``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`` and rejects
V1 classes at engine start. So every rule here is written once as plain Python
(:class:`~reasonexit.step_rules.base.StepRule`: token ids in, a forced token out) and wrapped by a
thin adapter for each interface (:mod:`.vllm_v1`, :mod:`.vllm_v2`).

The engine registers, for the runner it actually uses, only the rules that some method in the
process needs (:func:`require`, called when a method is built) or that its config names.
Requests switch a rule on through ``SamplingParams.extra_args``; others pay nothing.
:func:`check_engine_supports` refuses, before the engine starts, configs the rules cannot run on.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import UserError
from ..registry import Registry

#: Rule name -> (V1 adapter, V2 adapter), as fully-qualified class names vLLM loads by name.
RULES: Registry[tuple[str, str]] = Registry("per-step rule")
RULES.register(
    "budget", ("reasonexit.step_rules.vllm_v1:ThinkingBudgetV1", "reasonexit.step_rules.vllm_v2:ThinkingBudgetV2")
)

_REQUIRED: set[str] = set()


def require(names: Iterable[str]) -> None:
    """Note that a method in this process needs these rules (engines started later register them)."""
    for name in names:
        RULES.get(name)  # one line for an unknown name
        _REQUIRED.add(name)


def required() -> frozenset[str]:
    """Rules some method built in this process needs."""
    return frozenset(_REQUIRED)


def processors_for(names: Iterable[str], v2_runner: bool) -> list[str]:
    """The adapter classes to register for ``names`` on the V1 or the V2 model runner."""
    return [RULES.get(name)[1 if v2_runner else 0] for name in sorted(set(names))]


def check_engine_supports(vllm_config: Any, names: Iterable[str]) -> None:
    """Raise a one-line :class:`UserError` when an engine config cannot run the per-step rules ``names``.

    Speculative decoding is refused: Model Runner V2 hands processors one logits row per draft
    token, which the rules do not handle, and the V1 runner refuses custom logits processors with a
    ValueError inside the engine process. Called with the engine's config before the engine starts.
    """
    names = sorted(set(names))
    spec = getattr(vllm_config, "speculative_config", None)
    if not names or spec is None:
        return
    method = getattr(spec, "method", None) or "speculative decoding"
    raise UserError(
        f"per-step rule {', '.join(names)} cannot run with speculative decoding (speculative_config "
        f"method {method!r}): drop the speculative config, or use a method without per-step rules "
        '(for budget: impl="vllm")'
    )
