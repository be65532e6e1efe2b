"""``flashthink``: verifier-decided early exit (Jiang et al., 2025, arXiv 2505.13949).

The thinking is split into chunks at delimiters (a blank line by default; any list of strings,
matched on token ids). At every ``every``-th chunk boundary, once ``min_thinking_tokens`` have been
thought, a verifier reads the question and the reasoning so far and scores whether that is enough
to answer correctly. A score at or above ``threshold`` ends thinking after that chunk (closed with
the model's own end marker) and the model writes its answer; otherwise thinking goes on (in
branch-parallel mode it was never paused). FlashThink runs on the shared early-exit controller
(:mod:`reasonexit.methods.early_exit`): the chunk delimiters are its ``boundary`` hook, the
verifier its ``judge`` hook.

Verifiers (one interface, :class:`Verifier`), chosen with ``--verifier``:

- ``self``: the reasoning model itself. Its input is the question and reasoning exactly as the
  main trace holds them, followed by the judging question (``judge_prompt``), so successive checks
  of a trace, and the trace itself, share vLLM's prefix cache. The score is
  P(yes) / (P(yes) + P(no)) from the next-token logprobs of the yes/no tokens (asked for by id
  with vLLM's ``logprob_token_ids``, so they are exact even when not among the top tokens).
- ``model``: a separate checkpoint (``--verifier-model``) served by a second engine in this
  process, with its own memory share (``verifier_kv_cache_gib`` on CPU,
  ``verifier_gpu_memory_utilization`` on GPU). Same input layout and scoring.
- ``served``: any OpenAI-compatible ``/v1/completions`` endpoint (``--verifier-url``,
  ``--verifier-model``, key from ``REASONEXIT_VERIFIER_API_KEY`` or ``OPENAI_API_KEY``); the score
  comes from the returned top logprobs (20). Requests time out after ``verifier_timeout`` seconds;
  a failing endpoint stops the run with one clear error, or with ``on_verifier_error=continue``
  the run goes on without exits (recorded per check).
- ``trained`` (the paper's FT²): a verifier trained by ``scripts/train_verifier.py`` on exits
  taken for real in the reasoning model's own traces, served like ``model``. The bundled testbed
  ships one (``reasonexit/assets/tiny_verifier``); ``auto`` (default) uses it for the testbed and
  ``self`` for any other model.

Yes/no tokens: every vocabulary token whose text, stripped and lower-cased, is a non-empty prefix
of ``yes`` / ``no`` (``yes``, `` Yes``, ``y``, ``No``, ``n``...), their probabilities summed, so a
verifier that answers with any spelling (or, like the testbed's trained one, with ``y``/``n``) is
read right. When no yes token shows up in a served endpoint's top logprobs the score is 0 (no
evidence for an exit).

Records per problem (``info``): every check (``pos``, ``score``, ``yes_logprob``, ``no_logprob``,
``exit``, the verifier's prompt / cached / decoded tokens), the exit position and reason, and the
verifier totals (``verifier_tokens``, ``verifier_prompt_tokens``, ``verifier_wall_s``). Compute
tokens include the tokens the verifier decoded, whichever engine or endpoint it runs on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..engine import (
    DEFAULT_MODEL,
    EngineConfig,
    EngineSession,
    get_session,
    reserve_spare_core,
    spare_cpu_core,
)
from ..engine import platform as device
from ..errors import UserError
from .base import Context, register
from .early_exit import EarlyExitMethod, ExitLimits, Mode, Verdict, validate_limits
from .verifiers import (
    DEFAULT_JUDGE_PROMPT,
    TESTBED_VERIFIER,
    EngineVerifier,
    ServedVerifier,
    Verifier,
    VerifierKind,
    trained_judge_prompt,
)


@dataclass
class FlashThinkParams:
    """Parameters of FlashThink (each field's ``help`` is its documentation)."""

    # 0.9: on 32 testbed problems the trained verifier kept vanilla's accuracy at 0.9 (100%) but lost
    # 22 points at 0.5 (scripts/bench_flashthink.py --limit 32).
    threshold: float = field(
        default=0.9, metadata={"help": "exit when the verifier's score reaches this (0: first check; above 1: never)"}
    )
    delimiters: tuple[str, ...] = field(
        default=("\n\n",), metadata={"help": "strings that end a chunk (comma-separated; escapes such as \\n work)"}
    )
    every: int = field(default=1, metadata={"help": "check at every k-th chunk boundary"})
    min_thinking_tokens: int = field(default=0, metadata={"help": "thinking tokens before the first check"})
    max_checks: int = field(default=32, metadata={"help": "verifier checks per problem at most"})
    budget_ratio: float = field(
        default=0.9,
        metadata={"help": "exit regardless once thinking reaches this fraction of max_tokens (1: no budget)"},
    )
    mode: Mode = field(
        default="auto",
        metadata={
            "help": "sequential, parallel (decode on while verifying) or auto (parallel on GPU or with a verifier"
            " on its own engine or endpoint, else sequential)"
        },
    )
    verifier: VerifierKind = field(
        default="auto",
        metadata={"help": "self, model, served, trained, or auto (trained on the bundled testbed, else self)"},
    )
    verifier_model: str | None = field(
        default=None, metadata={"help": "verifier checkpoint (model, trained) or the served model's name (served)"}
    )
    verifier_url: str | None = field(
        default=None, metadata={"help": "base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1"}
    )
    verifier_timeout: float = field(default=30.0, metadata={"help": "seconds before a served verifier call fails"})
    on_verifier_error: Literal["fail", "continue"] = field(
        default="fail",
        metadata={"help": "a failing served verifier stops the run (fail) or exits are skipped (continue)"},
    )
    verifier_kv_cache_gib: float = field(default=1.0, metadata={"help": "KV cache of the verifier engine on CPU (GiB)"})
    verifier_cpu_cores: str | None = field(
        default=None,
        metadata={
            "help": "CPU only: cores the verifier engine's threads bind to (default: the core vLLM leaves "
            "free beside the main engine; see engine.spare_cpu_core)"
        },
    )
    verifier_gpu_memory_utilization: float = field(
        default=0.2,
        metadata={
            "help": "GPU memory share of the verifier engine; on the main engine's GPU the main engine's default "
            "share is lowered by it"
        },
    )
    verifier_gpu_devices: str | None = field(
        default=None,
        metadata={"help": "GPU only: the devices the verifier engine runs on (CUDA_VISIBLE_DEVICES, e.g. 1); "
                  "default: the main engine's"},
    )  # fmt: skip
    judge_prompt: str | None = field(
        default=None,
        metadata={"help": "judging question after the reasoning (default: the trained verifier's, else the built-in)"},
    )

    def validate(self) -> None:
        """Reject impossible settings."""
        if self.threshold < 0:
            raise UserError("--threshold must be >= 0")
        if not [d for d in self.delimiters if d]:
            raise UserError("--delimiters needs at least one non-empty string")
        if self.every < 1 or self.min_thinking_tokens < 0:
            raise UserError("--every must be >= 1 and --min-thinking-tokens >= 0")
        validate_limits(self.max_checks, self.budget_ratio)
        if self.verifier_timeout <= 0:
            raise UserError("--verifier-timeout must be > 0")
        if self.verifier == "served" and not (self.verifier_url and self.verifier_model):
            raise UserError("--verifier served needs --verifier-url and --verifier-model")
        if self.verifier == "model" and not self.verifier_model:
            raise UserError("--verifier model needs --verifier-model (a checkpoint directory or hub id)")


# ---------------------------------------------------------------------------- method
class _Chunks:
    """Finds chunk ends in a growing trace by token ids (each id's text is looked up once)."""

    def __init__(self, session: EngineSession, delimiters: tuple[str, ...]) -> None:
        self.delimiters = [d for d in delimiters if d]
        self.texts = [session.decode([i]) for i in range(len(session.tokenizer))]
        self.last_chars = {d[-1] for d in self.delimiters}

    def ends_chunk(self, trace: list[int], floor: int) -> bool:
        """True when the newest token ends a delimiter (inside ``trace[floor:]``)."""
        last = self.texts[trace[-1]] if trace[-1] < len(self.texts) else ""
        if not last or last[-1] not in self.last_chars:
            return False
        for d in self.delimiters:
            acc, j = "", len(trace) - 1
            while len(acc) < len(d) and j >= floor:
                acc = self.texts[trace[j]] + acc
                j -= 1
            if acc.endswith(d):
                return True
        return False


class _FlashThinkHooks:
    """FlashThink's hooks for one problem."""

    def __init__(self, method: FlashThink, chunks: _Chunks) -> None:
        self.method = method
        self.chunks = chunks
        self.seen = 0  # chunk boundaries so far
        self.think_from = 0
        self.hold = 0  # a chunk is cut after its delimiter: no token before the newest can be cut later

    def boundary(self, trace: list[int], think_from: int) -> int | None:
        """After a delimiter: every ``every``-th one, once ``min_thinking_tokens`` are thought."""
        self.think_from = think_from
        if len(trace) <= think_from or not self.chunks.ends_chunk(trace, think_from):
            return None
        self.seen += 1
        p = self.method.params
        if self.seen % p.every or len(trace) - think_from < p.min_thinking_tokens:
            return None
        return len(trace)

    async def judge(self, ctx: Context, trace: list[int], cut: int) -> Verdict:
        """Ask the verifier about the question and ``trace[:cut]``."""
        verifier = await self.method.verifier(ctx.session)
        check = await verifier.check(ctx, [*ctx.prompt_ids, *trace[:cut]])
        return Verdict(
            exit=check.error is None and check.score >= self.method.params.threshold,
            record=check.record(),
            tokens=check.tokens,
            prompt_tokens=check.prompt_tokens,
        )


def verifier_engine_config(main: EngineSession, p: FlashThinkParams, path: str) -> EngineConfig:
    """The engine settings of a verifier (``model``, ``trained``) beside the reasoning model's engine
    ``main``: its own KV cache and spare CPU core on CPU; on GPU its own memory share, on the main
    engine's GPU unless ``verifier_gpu_devices`` names others (one line if the shares cannot fit)."""
    cfg = main.config
    if p.verifier_gpu_devices is None and main.gpu_memory_utilization is not None:
        device.check_second_share(main.gpu_memory_utilization, p.verifier_gpu_memory_utilization)
    return EngineConfig(
        model=path,
        dtype=cfg.dtype,
        max_model_len=main.max_model_len,
        kv_cache_gib=p.verifier_kv_cache_gib,
        gpu_memory_utilization=p.verifier_gpu_memory_utilization,
        gpu_devices=p.verifier_gpu_devices if p.verifier_gpu_devices is not None else cfg.gpu_devices,
        seed=cfg.seed,
        max_num_seqs=cfg.max_num_seqs,
        trust_remote_code=cfg.trust_remote_code,
        cpu_cores=p.verifier_cpu_cores or spare_cpu_core(main.cpu_binding),
        no_thinking=True,
    )


@register
class FlashThink(EarlyExitMethod):
    """Exit thinking after a chunk once a verifier says the reasoning is enough (FlashThink)."""

    name = "flashthink"
    Params = FlashThinkParams

    def __init__(self, params: FlashThinkParams | None = None) -> None:
        super().__init__(params)
        self._chunks: dict[int, _Chunks] = {}
        self._verifiers: dict[int, Verifier] = {}
        self._lock: asyncio.Lock | None = None
        if self.params.verifier in ("auto", "model", "trained"):
            # a verifier engine may start: main engines started later leave it a core (CPU), or its
            # memory share when it shares their GPU
            reserve_spare_core()
            if self.params.verifier_gpu_devices is None:
                # (on an engine it can run on: a reasoning model's, not a verifier's own)
                device.reserve_gpu_share(
                    self.params.verifier_gpu_memory_utilization,
                    lambda s: s.markers.has_thinking and self.verifier_kind(s) in ("model", "trained"),
                )

    def hooks(self, ctx: Context) -> _FlashThinkHooks:
        """Chunk delimiters as the boundary, the verifier as the judge."""
        key = id(ctx.session)
        if key not in self._chunks:
            self._chunks[key] = _Chunks(ctx.session, self.params.delimiters)
        return _FlashThinkHooks(self, self._chunks[key])

    def limits(self, session: EngineSession | None = None) -> ExitLimits:
        """FlashThink's check limit and thinking budget for the shared controller.

        With a verifier on its own engine or endpoint (not ``self``), ``auto`` mode decodes on
        while the verifier runs (see :func:`~reasonexit.methods.early_exit.resolve_mode`).
        """
        p = self.params
        if session is None:
            kind = p.verifier
        else:  # the built verifier says its kind (no file lookups per problem once ``prepare`` ran)
            built = self._verifiers.get(id(session))
            kind = built.kind if built is not None else self.verifier_kind(session)
        return ExitLimits(
            max_checks=p.max_checks,
            budget_ratio=p.budget_ratio,
            mode=p.mode,
            checks_elsewhere=kind in ("model", "trained", "served"),
            records_key="checks",
        )

    async def prepare(self, session: EngineSession) -> None:
        """Build the verifier (start its engine) before any trace decodes."""
        await self.verifier(session)

    def verifier_kind(self, session: EngineSession) -> str:
        """The verifier kind ``auto`` stands for with this reasoning model."""
        kind = self.params.verifier
        if kind == "auto":
            testbed = Path(session.config.model).resolve() == Path(DEFAULT_MODEL).resolve()
            kind = "trained" if testbed and Path(TESTBED_VERIFIER, "config.json").is_file() else "self"
        return kind

    async def verifier(self, session: EngineSession) -> Verifier:
        """The verifier for the reasoning model of ``session`` (built once, shared by all problems)."""
        key = id(session)
        if key in self._verifiers:
            return self._verifiers[key]
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if key not in self._verifiers:
                self._verifiers[key] = await self._build_verifier(session)
        return self._verifiers[key]

    async def _build_verifier(self, main: EngineSession) -> Verifier:
        p = self.params
        kind = self.verifier_kind(main)
        if kind == "self":
            return EngineVerifier(
                "self", main, main, DEFAULT_JUDGE_PROMPT if p.judge_prompt is None else p.judge_prompt
            )
        if kind == "served":
            assert p.verifier_url and p.verifier_model
            judge = DEFAULT_JUDGE_PROMPT if p.judge_prompt is None else p.judge_prompt
            return ServedVerifier(
                main, p.verifier_url, p.verifier_model, judge, p.verifier_timeout, p.on_verifier_error == "continue"
            )
        path = p.verifier_model or (TESTBED_VERIFIER if kind == "trained" else None)
        if path is None:
            raise UserError("--verifier model needs --verifier-model")
        judge = p.judge_prompt
        if judge is None:
            judge = trained_judge_prompt(path)
        if judge is None:
            judge = DEFAULT_JUDGE_PROMPT
        config = verifier_engine_config(main, p, path)
        loop = asyncio.get_running_loop()
        # Loading a tokenizer and starting an engine block: do it off the engine loop.
        session = await loop.run_in_executor(None, lambda: get_session(config, name="verifier"))
        await loop.run_in_executor(None, session.start)
        return await loop.run_in_executor(None, lambda: EngineVerifier(kind, main, session, judge))
