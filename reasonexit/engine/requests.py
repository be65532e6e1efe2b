"""What controllers ask of an engine session: token ids in and out, and streamed requests.

:class:`~reasonexit.engine.session.EngineSession` is one of these; the lifecycle of its engine and
event loop is in :mod:`.session`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from ..errors import UserError
from ..thinking import chat_prompt_ids
from .types import Completion, Delta, Usage


class Requests:
    """Tokens and requests of a session whose engine (``engine``, vLLM's ``AsyncLLM``) and tokenizer
    the subclass provides."""

    _ids = itertools.count()
    tokenizer: Any
    max_model_len: int
    _decode_ids: Callable[[list[int]], str]
    _engine: Any

    @property
    def engine(self) -> Any:  # provided by the session, which starts it on first use
        raise NotImplementedError

    # ----------------------------------------------------------------- tokens
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens such as the thinking markers are kept."""
        return self._decode_ids(list(ids))

    def chat_prompt_ids(self, messages: str | Sequence[dict[str, str]]) -> list[int]:
        """Prompt token ids for a user message (or a list of chat messages) with the chat template."""
        return chat_prompt_ids(self.tokenizer, messages)

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
