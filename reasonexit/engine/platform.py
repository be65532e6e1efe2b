"""Where engines run: the one GPU-or-CPU check, and the GPU memory shares of engines in one process.

The check never initialises CUDA in this process. vLLM's CUDA build starts its engine core with
the ``fork`` start method unless CUDA is already initialised in the parent (then it must fall
back to ``spawn``, and a forked child that touches CUDA fails with "Cannot re-initialize CUDA in
forked subprocess"). ``torch.cuda.is_available()`` initialises CUDA unless
``PYTORCH_NVML_BASED_CUDA_CHECK=1``, which vLLM sets when it is imported; asking vLLM's own
platform detection (NVML / amdsmi, no CUDA context) imports vLLM first, so every later check is
NVML-based too, and it names the platform vLLM will actually run on (a CPU build of vLLM on a
GPU machine runs on the CPU).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

#: A GPU engine's memory share when nothing else in the process asks for one (vLLM's default).
DEFAULT_GPU_SHARE = 0.9

#: (share, predicate): a second engine that will take ``share`` of the main engine's GPU when
#: ``predicate(main_session)`` holds.
_SECOND_ENGINES: list[tuple[float, Callable[[Any], bool]]] = []


@functools.cache
def on_gpu() -> bool:
    """True when vLLM runs its engines on a GPU (CUDA or ROCm) here. Never initialises CUDA."""
    try:
        from vllm.platforms import current_platform
    except Exception:  # noqa: BLE001 - no usable vLLM (e.g. training without it): ask torch, NVML-based
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # what vLLM's import sets, for the same reason
        try:
            import torch

            return bool(torch.cuda.is_available())
        except Exception:  # noqa: BLE001 - any failure means no usable GPU
            return False
    return bool(current_platform.is_cuda_alike())


def reserve_gpu_share(share: float, needed: Callable[[Any], bool] = lambda session: True) -> None:
    """Note that a method built in this process may start a second engine (a FlashThink verifier)
    on the main engine's GPU with ``share`` of its memory, when ``needed(main_session)``: main
    engines started from now on default to :data:`DEFAULT_GPU_SHARE` less it (see :func:`gpu_share`)."""
    _SECOND_ENGINES.append((share, needed))


def reserved_gpu_share(session: Any) -> float:
    """The largest share a second engine of this process may take on ``session``'s GPU (0 if none)."""
    return max((share for share, needed in _SECOND_ENGINES if needed(session)), default=0.0)


def gpu_share(requested: float | None, session: Any) -> float:
    """The memory share of ``session``'s (main) engine: the one asked for, else the default less what
    a second engine on the same GPU needs. Raises :class:`~reasonexit.errors.UserError` (one line)
    when the shares cannot fit on one device: vLLM refuses an engine whose share is more than the
    memory left free."""
    from ..errors import UserError

    second = reserved_gpu_share(session)
    share = requested if requested is not None else round(DEFAULT_GPU_SHARE - second, 4)
    if share <= 0 or share + second > 1.0:
        raise UserError(
            f"GPU memory shares do not fit on one device: --gpu-memory-utilization {share:g} plus "
            f"{second:g} for a verifier engine on the same GPU is more than 1; lower one "
            "(--gpu-memory-utilization, --verifier-gpu-memory-utilization) or put the verifier on "
            "another GPU (--verifier-gpu-devices)"
        )
    return share


def check_second_share(main_share: float, share: float) -> None:
    """One line when a second engine's share does not fit beside a running main engine's."""
    from ..errors import UserError

    if main_share + share > 1.0:
        raise UserError(
            f"GPU memory shares do not fit on one device: the main engine has {main_share:g} and the "
            f"verifier engine asks for {share:g}; lower --gpu-memory-utilization or "
            "--verifier-gpu-memory-utilization, or put the verifier on another GPU (--verifier-gpu-devices)"
        )
