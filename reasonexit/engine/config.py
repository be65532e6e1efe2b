"""The engine's settings (:class:`EngineConfig`) and what they name on disk: the model's tokenizer,
context length and checkpoint dtype."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import UserError, first_line
from ..options import opt

_ASSETS = Path(__file__).resolve().parents[1] / "assets"
#: The bundled tiny reasoning model, the quick default (see ``scripts/train_tiny_reasoner.py``).
DEFAULT_MODEL = str(_ASSETS / "tiny_reasoner")
#: The hard testbed, on which exit rules are measured (``train_tiny_reasoner.py --hard``).
HARD_MODEL = str(_ASSETS / "tiny_reasoner_hard")
#: Short names of the bundled testbeds, accepted wherever a model is named (``--model hard``).
BUNDLED_MODELS: dict[str, str] = {"tiny": DEFAULT_MODEL, "hard": HARD_MODEL}


def resolve_model(name: str) -> str:
    """The path a bundled testbed's short name stands for; any other name unchanged.

    A directory of that name in the working directory wins over the short name. A bundled testbed
    that is not in this checkout is a one-line error saying how to train it.
    """
    if name in BUNDLED_MODELS and not Path(name).exists():
        path = BUNDLED_MODELS[name]
        if not (Path(path) / "config.json").is_file():
            flag = " --hard" if name == "hard" else ""
            raise UserError(
                f"the {name!r} testbed is not in this checkout ({path}); "
                f"train it with: python scripts/train_tiny_reasoner.py{flag}"
            )
        return path
    return name


@dataclass
class EngineConfig:
    """Settings of the shared vLLM engine (one per model in a process).

    Defaults suit where the engine runs: on CPU a 2 GiB KV cache, eager mode, KV blocks of 32 and
    float32 unless the CPU computes bfloat16 natively; on GPU vLLM's own defaults. Every field is
    a ``reasonexit eval`` flag of the same name.
    """

    model: str = opt(
        DEFAULT_MODEL,
        help="local model directory, hub name, or a bundled testbed: tiny (the default) or hard",
    )
    tokenizer: str | None = opt(None, help="tokenizer directory or hub name, if not the model's")
    dtype: str = opt(
        "auto",
        help="weights and activations dtype; auto: the checkpoint's, but float32 on CPUs without native bfloat16",
    )
    max_model_len: int | None = opt(None, help="context length (default: the model's)")
    kv_cache_gib: float | None = opt(
        None, help="KV-cache size in GiB (default on CPU: VLLM_CPU_KVCACHE_SPACE or 2; on GPU: from memory share)"
    )
    gpu_memory_utilization: float | None = opt(
        None,
        help="share of GPU memory this engine may use (GPU only; default 0.9, less the share of a second engine "
        "a method starts on the same GPU, such as a FlashThink verifier)",
    )
    gpu_devices: str | None = opt(
        None, help="GPU only: the devices this engine's processes see (CUDA_VISIBLE_DEVICES, e.g. 1); default: all"
    )
    tensor_parallel_size: int = opt(1, help="GPUs a model is split across (vLLM tensor parallelism)")
    data_parallel_size: int = opt(1, help="engine replicas (vLLM data parallelism)")
    enforce_eager: bool | None = opt(None, help="skip graph compilation (default: on CPU yes, on GPU no)")
    seed: int = opt(0, help="engine seed")
    max_num_seqs: int | None = opt(
        1024,
        help="sequences decoded at once; large so probes and branches never queue behind main traces",
    )
    block_size: int | None = opt(
        None,
        help="KV block size (default: vLLM's on GPU; 32 on CPU, where 128 would re-prefill up to 127 shared "
        "tokens per probe: prefix caching works in whole blocks)",
    )
    trust_remote_code: bool = opt(False, help="allow model code from the hub")
    cpu_cores: str | None = opt(
        None,
        help="CPU only: cores the engine's model threads bind to, as vLLM's VLLM_CPU_OMP_THREADS_BIND "
        "(e.g. 0-3, or nobind); default: that variable, else on a machine of at most 2 cores all of them "
        "(unless a second engine, a FlashThink verifier, or `serve`'s HTTP front end needs one), else vLLM's "
        "choice (all cores but one)",
    )
    think_start: str | None = opt(None, help="thinking start marker (overrides detection)")
    think_end: str | None = opt(None, help="thinking end marker (overrides detection)")
    no_thinking: bool = opt(False, help="treat the model as a non-reasoning model")
    reasoning_parser: str | None = opt(
        None, help="take the thinking markers from this vLLM reasoning parser (deepseek_r1, qwen3, ...)"
    )
    step_rules: tuple[str, ...] = opt(
        (), help="per-step rules to register even if no method built before the engine start needs them"
    )
    engine_args: dict[str, Any] = opt(
        default_factory=dict, help="any other vLLM AsyncEngineArgs fields, as a JSON object"
    )

    def __post_init__(self) -> None:
        """Check the settings before anything starts (the engine would find them 40-60 s later)."""
        import typing

        from vllm.config.model import ModelDType

        self.model = resolve_model(self.model)
        if self.tokenizer is not None:
            self.tokenizer = resolve_model(self.tokenizer)
        dtypes = [d for d in typing.get_args(ModelDType) if isinstance(d, str)]
        if self.dtype not in dtypes:
            raise UserError(f"--dtype {self.dtype!r} is not a dtype vLLM knows; choose from: {', '.join(dtypes)}")
        for name, value, low in (
            ("--max-num-seqs", self.max_num_seqs, 1),
            ("--tensor-parallel-size", self.tensor_parallel_size, 1),
            ("--data-parallel-size", self.data_parallel_size, 1),
            ("--block-size", self.block_size, 1),
            ("--max-model-len", self.max_model_len, 1),
        ):
            if value is not None and value < low:
                raise UserError(f"{name} must be >= {low}, got {value}")
        if self.kv_cache_gib is not None and not self.kv_cache_gib > 0:
            raise UserError(f"--kv-cache-gib must be > 0, got {self.kv_cache_gib}")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise UserError(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and not os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN"):
            limit = context_length(self)
            if self.max_model_len > limit:
                raise UserError(
                    f"--max-model-len {self.max_model_len} is longer than the model's context of {limit} tokens "
                    "(its config.json)"
                )

    def key(self) -> tuple:
        """A hashable identity, used to share one session per configuration.

        ``step_rules`` is left out: it only adds rules at start, and a running engine says which
        it has (:meth:`EngineSession.require_rule`).
        """
        return tuple((f.name, repr(getattr(self, f.name))) for f in fields(self) if f.name != "step_rules")


def checkpoint_dtype(config: EngineConfig) -> str | None:
    """The dtype a local checkpoint's config.json declares (None if unknown or not local)."""
    path = Path(config.model).expanduser() / "config.json"
    try:
        import json

        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    value = data.get("dtype") or data.get("torch_dtype")
    return str(value) if value else None


def context_length(config: EngineConfig) -> int:
    """The context length the model's config declares (vLLM's own value replaces it at start)."""
    try:
        from transformers import AutoConfig

        hf = AutoConfig.from_pretrained(config.model, trust_remote_code=config.trust_remote_code)
    except Exception:  # noqa: BLE001 - unknown here; the engine will tell
        return 1 << 30
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(hf, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 30


def load_tokenizer(name: str, trust_remote_code: bool = False) -> Any:
    """Load the tokenizer of model ``name`` (a directory or hub name); a bad name is one clear error line."""
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or path.exists() or name.count("/") != 1
    if looks_local and not path.exists():
        raise UserError(f"model not found: {name!r} is not a local directory or a hub name (org/model)")
    if path.exists() and not (path / "config.json").exists():
        raise UserError(f"model directory {name!r} has no config.json")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any load failure is the user's model argument
        first = first_line(exc)
        raise UserError(f"cannot load tokenizer of model {name!r}: {first}") from None


def fast_decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """``tokenizer.decode(ids, skip_special_tokens=False)``, straight to the Rust tokenizer when the
    result is the same: transformers' wrapper converts the ids one by one first, which made it the
    largest cost of streaming text (``reasonexit serve`` decodes every chunk of every stream)."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "decode") or getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)
    return lambda ids: backend.decode(ids, skip_special_tokens=False)
