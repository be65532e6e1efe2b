"""FlashThink's verifiers: whether the reasoning so far is enough, as P(yes) from a model.

One interface (:class:`Verifier`) with two implementations: :class:`EngineVerifier` scores with an
engine of this process (the reasoning model's own, ``self``; or a second one, ``model`` and
``trained``), :class:`ServedVerifier` with any OpenAI-compatible ``/v1/completions`` endpoint
(``served``). See :mod:`reasonexit.methods.flashthink` for how the scores are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..engine import EngineSession, Usage
from ..errors import UserError
from .base import Context

#: The judging question put after the reasoning (the reasoning model's own words follow it).
DEFAULT_JUDGE_PROMPT = "\n\nIs the reasoning above enough to give the correct final answer? Answer yes or no.\n"


#: The verifier trained for the bundled testbed by ``scripts/train_verifier.py``.
TESTBED_VERIFIER = str(Path(__file__).resolve().parents[1] / "assets" / "tiny_verifier")


#: Top logprobs asked of a served endpoint (the OpenAI API's maximum).
SERVED_TOP_LOGPROBS = 20


#: At most this many yes (and no) token ids are scored.
MAX_ANSWER_IDS = 48


VerifierKind = Literal["auto", "self", "model", "served", "trained"]


# ---------------------------------------------------------------------------- scoring
def is_answer_piece(text: str, word: str) -> bool:
    """True when a token's text, stripped and lower-cased, is a non-empty prefix of ``word``."""
    piece = text.strip().lower()
    return bool(piece) and word.startswith(piece)


def answer_token_ids(texts: list[str]) -> tuple[list[int], list[int]]:
    """Ids of the yes and no tokens of a vocabulary given each id's text (see the module docstring)."""
    yes = [i for i, t in enumerate(texts) if is_answer_piece(t, "yes")]
    no = [i for i, t in enumerate(texts) if is_answer_piece(t, "no")]
    return yes[:MAX_ANSWER_IDS], no[:MAX_ANSWER_IDS]


def _logsumexp(xs: list[float]) -> float | None:
    xs = [x for x in xs if x > -math.inf]
    if not xs:
        return None
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def yes_no_score(yes_lps: list[float], no_lps: list[float]) -> tuple[float, float | None, float | None]:
    """``(score, log P(yes), log P(no))`` with score = P(yes) / (P(yes) + P(no)); 0 without evidence."""
    y, n = _logsumexp(yes_lps), _logsumexp(no_lps)
    if y is None:
        return 0.0, y, n
    if n is None:
        return 1.0, y, n
    return 1.0 / (1.0 + math.exp(n - y)), y, n


def score_record(yes_lp: float | None, no_lp: float | None) -> float:
    """The score a check's recorded yes/no logprobs give (for checking records)."""
    return yes_no_score([] if yes_lp is None else [yes_lp], [] if no_lp is None else [no_lp])[0]


@dataclass
class Check:
    """What one verifier call returned."""

    score: float
    yes_logprob: float | None
    no_logprob: float | None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    tokens: int = 0
    error: str | None = None

    def record(self) -> dict[str, Any]:
        """JSON-ready record (the controller adds ``pos`` and ``exit``)."""
        rec: dict[str, Any] = {
            "score": round(self.score, 6),
            "yes_logprob": None if self.yes_logprob is None else round(self.yes_logprob, 6),
            "no_logprob": None if self.no_logprob is None else round(self.no_logprob, 6),
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "tokens": self.tokens,
        }
        if self.error is not None:
            rec["error"] = self.error
        return rec


# ---------------------------------------------------------------------------- verifiers
class Verifier(ABC):
    """Scores whether the reasoning so far is enough to answer correctly.

    ``ids`` is the question and the reasoning so far in the *reasoning model's* token ids (the
    chat-templated prompt plus the kept thinking): never the gold answer.
    """

    kind: str

    @abstractmethod
    async def check(self, ctx: Context, ids: list[int]) -> Check:
        """Score one cut; add the verifier's token counts to ``ctx.usage``."""


class EngineVerifier(Verifier):
    """A verifier on a vLLM engine session: the reasoning model's own (``self``) or a second one."""

    def __init__(self, kind: str, main: EngineSession, session: EngineSession, judge_prompt: str) -> None:
        self.kind = kind
        self.main = main
        self.session = session
        self.judge_ids = session.encode(judge_prompt)
        # The same vocabulary means the reasoning's ids go in as they are; otherwise the text is
        # re-tokenized for the verifier (it reads the trace, it does not continue it).
        self.same_vocab = session is main or session.tokenizer.get_vocab() == main.tokenizer.get_vocab()
        texts = [session.decode([i]) for i in range(len(session.tokenizer))]
        self.yes_ids, self.no_ids = answer_token_ids(texts)
        if not self.yes_ids or not self.no_ids:
            raise UserError(f"verifier {session.config.model!r} has no yes/no tokens to score")

    def verifier_input(self, ids: list[int]) -> list[int]:
        """The verifier's prompt: question and reasoning first, the judging question last."""
        body = ids if self.same_vocab else self.session.encode(self.main.decode(ids))
        return [*body, *self.judge_ids]

    async def _ask(self, prompt: list[int], usage: Usage, request_id: str) -> dict[int, float]:
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            logprob_token_ids=[*self.yes_ids, *self.no_ids],
            detokenize=False,
            skip_special_tokens=False,
            skip_clone=True,  # built for this request alone
        )
        tops: dict[int, float] = {}
        async with contextlib.aclosing(self.session.stream(prompt, params, usage, request_id)) as st:
            async for d in st:
                if d.top_logprobs:
                    tops = d.top_logprobs[0]
        return tops

    async def check(self, ctx: Context, ids: list[int]) -> Check:
        """One request with ``max_tokens=1``, scored from the yes/no logprobs."""
        prompt = self.verifier_input(ids)
        if len(prompt) >= self.session.max_model_len:
            return Check(0.0, None, None, len(prompt), error="verifier prompt longer than the verifier's context")
        usage = Usage()
        rid = self.session.new_request_id(f"{ctx.request_prefix}.verify")
        try:
            if self.session is self.main:
                tops = await self._ask(prompt, usage, rid)
            else:
                tops = await self.session.arun(self._ask(prompt, usage, rid))
        finally:  # a check cancelled by an earlier exit still counts what it had decoded
            ctx.usage.add(usage)
        score, y, n = yes_no_score(
            [tops[i] for i in self.yes_ids if i in tops], [tops[i] for i in self.no_ids if i in tops]
        )
        return Check(score, y, n, len(prompt), usage.cached_prompt_tokens, usage.compute_tokens)


class ServedVerifier(Verifier):
    """A verifier behind an OpenAI-compatible ``/v1/completions`` endpoint."""

    kind = "served"

    def __init__(self, main: EngineSession, url: str, model: str, judge_prompt: str, timeout: float, keep_going: bool):
        self.main = main
        self.url = url.rstrip("/") + "/completions"
        self.model = model
        self.judge_prompt = judge_prompt
        self.timeout = timeout
        self.keep_going = keep_going
        self.down: str | None = None  # the first failure, once the endpoint has failed (continue mode)
        self._client: Any = None

    def verifier_input(self, ids: list[int]) -> str:
        """The verifier's prompt text: question and reasoning first, the judging question last."""
        return self.main.decode(ids) + self.judge_prompt

    async def _post(self, prompt: str) -> dict[str, Any]:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout))
        key = os.environ.get("REASONEXIT_VERIFIER_API_KEY") or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": SERVED_TOP_LOGPROBS,
        }
        # One overall deadline as well as httpx's per-phase timeouts, so a trickling server cannot hang a run.
        resp = await asyncio.wait_for(self._client.post(self.url, json=body, headers=headers), self.timeout)
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        return resp.json()

    async def check(self, ctx: Context, ids: list[int]) -> Check:
        """One completion request; the score comes from the first token's top logprobs."""
        if self.down is not None:
            return Check(0.0, None, None, error=f"verifier down: {self.down}")
        prompt = self.verifier_input(ids)
        try:
            data = await self._post(prompt)
            choice = data["choices"][0]
            top = (choice.get("logprobs") or {}).get("top_logprobs") or [{}]
            first = top[0] or {}
            usage = data.get("usage") or {}
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the endpoint is reported the same way
            if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
                why = f"no answer within {self.timeout:g} s"
            else:
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if not self.keep_going:
                raise UserError(f"verifier endpoint {self.url} failed: {why}") from None
            self.down = why
            return Check(0.0, None, None, error=why)
        yes = [lp for t, lp in first.items() if is_answer_piece(t, "yes")]
        no = [lp for t, lp in first.items() if is_answer_piece(t, "no")]
        score, y, n = yes_no_score(yes, no)
        decoded = int(usage.get("completion_tokens", 1))
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        details = usage.get("prompt_tokens_details") or {}
        ctx.usage.compute_tokens += decoded
        ctx.usage.requests += 1
        ctx.usage.request_prompt_tokens += prompt_tokens
        return Check(score, y, n, prompt_tokens, int(details.get("cached_tokens") or 0), decoded)


def trained_judge_prompt(path: str) -> str | None:
    info = Path(path) / "verifier_info.json"
    if info.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError):
            return str(json.loads(info.read_text())["judge_prompt"])
    return None
