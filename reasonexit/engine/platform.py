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

import contextlib
import functools
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import EngineConfig, checkpoint_dtype

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


#: KV-cache size (GiB) of a CPU engine when neither the config nor the environment sets one.
CPU_KV_CACHE_GIB = 2


#: Held while an engine is configured and spawned with settings passed through the environment.
_SPAWN_LOCK = threading.Lock()


@contextlib.contextmanager
def engine_env(values: dict[str, str]) -> Any:
    """Set ``values`` in the environment for one engine's start, under a lock, and restore them after.

    vLLM's CPU backend reads its KV-cache size (``VLLM_CPU_KVCACHE_SPACE``) while building the
    engine config, and its worker binds its threads from ``VLLM_CPU_OMP_THREADS_BIND`` as read in
    the engine process at spawn; on GPU the devices an engine's processes see
    (``CUDA_VISIBLE_DEVICES``) are read likewise. Two engines in one process (a FlashThink verifier
    beside the reasoning model) need different values, and neither engine's value may stay behind to be
    taken as the user's setting by the next one.
    """
    with _SPAWN_LOCK:
        # The binding is also saved: the start may set it (see cpu_binding) under this lock.
        old = {k: os.environ.get(k) for k in {*values, "VLLM_CPU_OMP_THREADS_BIND"}}
        os.environ.update(values)
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


#: On a machine of at most this many cores, a lone CPU engine binds its model threads to all of them.
SMALL_MACHINE_CORES = 2


#: CPU engines running in this process (their sessions).
RUNNING_CPU_ENGINES: weakref.WeakSet[Any] = weakref.WeakSet()


#: Set when a method built in this process will start a second CPU engine beside the main one.
_SPARE_CORE_WANTED = False


def reserve_spare_core() -> None:
    """Note that something in this process needs a core of its own beside the model: a second CPU
    engine (a FlashThink verifier) or a server's HTTP front end (``reasonexit serve``). Engines
    started from now on leave vLLM's spare core free (see :func:`cpu_binding`), as
    ``step_rules.require`` notes the rules engines started later register."""
    global _SPARE_CORE_WANTED
    _SPARE_CORE_WANTED = True


def _allowed_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


def cpu_binding(config: EngineConfig) -> str | None:
    """The cores a CPU engine's model threads bind to (``VLLM_CPU_OMP_THREADS_BIND``), or ``None``
    to leave the choice to vLLM (or to the variable, when the user set it).

    vLLM keeps one core per worker for its scheduler processes and binds the model threads to the
    rest. On a 2-core machine that leaves the model one core, and a pass is faster with the threads
    on both cores (scheduler and threads then share one; see docs/results.md). So a lone engine
    on a machine of at most :data:`SMALL_MACHINE_CORES`
    cores takes them all, unless another CPU engine runs in this process, a method built here will
    start one, or the process serves HTTP (:func:`reserve_spare_core`).
    """
    if config.cpu_cores is not None:
        return config.cpu_cores
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ or _SPARE_CORE_WANTED or len(RUNNING_CPU_ENGINES):
        return None
    if config.tensor_parallel_size * config.data_parallel_size != 1:
        return None
    cores = _allowed_cores()
    return ",".join(map(str, cores)) if 1 < len(cores) <= SMALL_MACHINE_CORES else None


def spare_cpu_core(main_binding: str | None = None) -> str | None:
    """The core vLLM's default CPU binding leaves free (the last allowed one), as a binding string.

    On CPU, vLLM binds a worker's threads to all cores of its NUMA node but the last, which it
    keeps for the scheduler processes. A second, small engine (a FlashThink verifier) bound there
    runs beside the first instead of sharing its cores (faster on the 2-core testbed; see
    docs/results.md). ``None`` when the user
    set ``VLLM_CPU_OMP_THREADS_BIND``, when the main engine was bound to cores of its own choosing
    (``main_binding``, its :func:`cpu_binding`), or when the machine has a single core.
    """
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ or main_binding is not None:
        return None
    cores = _allowed_cores()
    return str(cores[-1]) if len(cores) > 1 else None


def shutdown_env(on_gpu: bool) -> dict[str, str]:
    """Environment defaults for the engine processes' shutdown (the user's own settings win).

    On CPU, vLLM's default 5 s grace before it signals a worker whose EngineCore is shutting down
    is as long as the grace the EngineCore itself gets, so every shutdown ended with "force killing
    EngineCore" and leaked shared memory; 1 s lets workers go first (a CPU worker has nothing to
    tear down). On GPU the same grace also bounds CUDA and NCCL teardown, which often takes longer:
    vLLM's own default stays, as ``vllm serve`` runs with it.
    """
    return {} if on_gpu else {"VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS": "1"}


def cpu_kv_cache_space(gib: float | None, default: float = CPU_KV_CACHE_GIB) -> str:
    """The KV-cache size of a CPU engine, as ``VLLM_CPU_KVCACHE_SPACE`` takes it (whole GiB).

    vLLM's CPU backend reads the size from that variable. Without it, it asks for a share of the
    node's memory and refuses to start when less is free (the failure the README's API example
    met), so a small cache is the default. ``gib`` wins, then a value already in the environment,
    then ``default``.
    """
    value = gib if gib is not None else os.environ.get("VLLM_CPU_KVCACHE_SPACE") or default
    return str(max(1, round(float(value))))


def set_cpu_kv_cache(gib: float | None, default: float = CPU_KV_CACHE_GIB) -> None:
    """Size the KV cache of a CPU engine started outside :class:`EngineSession` (the S-GRPO
    rollout's ``vllm.LLM``) by setting ``VLLM_CPU_KVCACHE_SPACE`` (see :func:`cpu_kv_cache_space`)."""
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = cpu_kv_cache_space(gib, default)


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_dtype(config: EngineConfig) -> tuple[str, str | None]:
    """The dtype to run in, and a note when ``auto`` chose float32 over the checkpoint's bfloat16.

    On a CPU without native bfloat16 a bfloat16 checkpoint runs about 2x slower than in float32
    (docs/results.md), so ``auto`` picks float32 there; a float32 checkpoint (the bundled testbed)
    stays float32, where vLLM's CPU backend would downcast it. Anything but ``auto`` is passed to vLLM as given.
    """
    if config.dtype != "auto" or on_gpu():
        return config.dtype, None
    declared = checkpoint_dtype(config)
    if declared == "float32":
        # vLLM's CPU backend would downcast a float32 checkpoint to bfloat16; keep what it was saved in
        return "float32", None
    if declared is None and Path(config.model).expanduser().exists():
        return config.dtype, None
    if declared in (None, "bfloat16") and not cpu_has_native_bf16():
        what = "bfloat16 checkpoint" if declared else "checkpoint"
        return "float32", f"dtype auto: float32 ({what}; this CPU has no native bfloat16)"
    return config.dtype, None
