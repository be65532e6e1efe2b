"""Adapters of :class:`~reasonexit.step_rules.base.StepRule` to vLLM's Model Runner V2 interface.

Model Runner V2 (the default of vLLM's CUDA build since 0.32) keeps requests in persistent slots
and gives a processor no live output list: committed tokens sit on the device in
``req_states.all_token_ids[slot, :total_len]``, the prompt being the first
``req_states.prompt_len[slot]`` of them. Slots are recycled without a removal call, so
``add_request`` resets a slot's state; on resumption after preemption the state restarts and
re-reads the output.

What the adapter costs per step:

* No tracked request in the batch (or every rule done): nothing; no device access at all.
* While a tracked request is in the batch: one small host-to-device copy (the positions to read)
  and one blocking device-to-host read of the tokens the tracked requests committed since the
  last step (about one int each), gathered for all of them at once. How many tokens each request
  has is known on the host (``prompt_len``/``prefill_len`` are host arrays and, without
  speculative decoding, ``LogitsContext.seq_lens_upper_bound_np`` is the exact sequence length),
  so ``total_len`` is never read. The read waits for the step's forward pass, so the host cannot
  run ahead of the device while a rule is active. A step that forces tokens adds one more
  host-to-device copy (rows and tokens together).
* vLLM's sampler runs its logits stages (and makes an fp32 copy of the logits) for a batch
  as long as any request in it asked for processing when it was added. Once a request's rule can
  force no more, the adapter withdraws its request from that flag when it can tell that nothing
  else asked for it (see :meth:`V2RuleProcessor.add_request`).

vLLM's own ``thinking_token_budget`` works without host reads. Speculative decoding (several
logits rows per request) is refused at engine start
(:func:`reasonexit.step_rules.check_engine_supports`); should such a batch reach the adapter
anyway, it leaves the logits unchanged and logs once.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcessor, LogitsProcRequestState

from .base import StepRule, force_tokens
from .budget import BudgetRule

if TYPE_CHECKING:
    import torch
    from vllm import SamplingParams
    from vllm.config import VllmConfig

log = logging.getLogger(__name__)


class V2RuleProcessor(LogitsProcessor):
    """A Model Runner V2 logits processor that runs one :class:`StepRule` per request that asks for it."""

    rule: ClassVar[type[StepRule]]

    def __init__(self, vllm_config: VllmConfig, req_states: LogitsProcRequestState) -> None:
        self.req_states = req_states
        self.states: dict[int, tuple[StepRule, list[int]]] = {}  # slot -> (rule, output ids read so far)
        # vLLM's sampler and, per slot, whether something other than these rules asked for
        # logits processing (None until known, or when it cannot be known).
        self._sampler: Any = None
        self._others_need: np.ndarray | None = None
        self._group: list[V2RuleProcessor] = [self]
        self._warned = False

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Reject malformed rule arguments when the request is admitted."""
        cls.rule.validate_params(sampling_params)

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        """(Re)initialise a slot; True when its request asked for the rule.

        vLLM 0.32's sampler ORs the answers of all its stages into a per-slot flag once, here, and
        offers no way to withdraw it. To stop the sampler's work once a rule is done, the adapter
        notes the calling sampler and what the stages before the rules answered; this reads vLLM
        internals, so if they are not as expected it keeps the flag (costing only the copy).
        """
        self._note_sampler(req_idx)
        rule = self.rule.for_params(sampling_params)
        if rule is None:
            self.states.pop(req_idx, None)
            return False
        self.states[req_idx] = (rule, [])
        return True

    def _note_sampler(self, req_idx: int) -> None:
        """Record the sampler calling :meth:`add_request` and the other stages' answer for ``req_idx``."""
        try:
            caller = sys._getframe(2).f_locals  # Sampler.add_request (our caller is add_request)
        except ValueError:
            return
        sampler = caller.get("self")
        flags = getattr(sampler, "needs_logits_processing", None)
        procs = list(getattr(sampler, "logits_processors", ()))
        if not isinstance(flags, np.ndarray) or self not in procs:
            return
        first = next(i for i, p in enumerate(procs) if isinstance(p, V2RuleProcessor))
        group = procs[first:]
        if not all(isinstance(p, V2RuleProcessor) for p in group):
            return  # a stage after the rules could need the slot: never withdraw
        if self is group[0]:
            need = caller.get("needs_processing")
            if self._others_need is None:
                self._others_need = np.ones(len(flags), dtype=bool)
            # unknown answers count as "needed", so the flag is then kept
            self._others_need[req_idx] = need if isinstance(need, (bool, np.bool_)) else True
        self._sampler = sampler
        self._group = group

    def _release(self, slot: int) -> None:
        """The slot's rule is done: let the sampler skip processing for it if nothing else needs it."""
        first = self._group[0]
        others = first._others_need
        if self._sampler is None or others is None or others[slot]:
            return
        if any(slot in p.states for p in self._group):
            return
        self._sampler.needs_logits_processing[slot] = False

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        """Feed each tracked request's new tokens to its rule and force the tokens the rules ask for."""
        if not self.states:
            return logits
        slots = ctx.idx_mapping_np.tolist()  # host array: no device access
        tracked = [(pos, slot) for pos, slot in enumerate(slots) if slot in self.states]
        if not tracked:
            return logits
        if logits.shape[0] != len(slots):
            if not self._warned:
                self._warned = True
                log.warning("reasonexit per-step rules do not support speculative decoding; rules left inactive")
            return logits
        rs = self.req_states
        prompt_len, prefill_len, seq_lens = rs.prompt_len.np, rs.prefill_len.np, ctx.seq_lens_upper_bound_np
        # What each tracked request committed since the last step, known on the host: a row still
        # prefilling has its whole prefill committed; a decoding row's sequence length is exact.
        read_slots: list[int] = []
        read_cols: list[int] = []
        counts: list[int] = []
        for pos, slot in tracked:
            start = int(prompt_len[slot]) + len(self.states[slot][1])
            total = max(int(seq_lens[pos]), int(prefill_len[slot]))
            n = max(total - start, 0)
            read_slots.extend([slot] * n)
            read_cols.extend(range(start, start + n))
            counts.append(n)
        new: list[int] = []
        if read_slots:
            import torch

            where = torch.tensor([read_slots, read_cols], dtype=torch.long).to(logits.device, non_blocking=True)
            new = rs.all_token_ids.gpu[where[0], where[1]].tolist()  # the step's one device read
        rows: list[int] = []
        tokens: list[int] = []
        done: list[int] = []
        i = 0
        for (pos, slot), n in zip(tracked, counts, strict=True):
            rule, output = self.states[slot]
            if n:
                output.extend(new[i : i + n])
                i += n
            tok = rule.step(output)
            if tok is not None:
                rows.append(pos)
                tokens.append(tok)
            elif rule.done:
                del self.states[slot]
                done.append(slot)
        for slot in done:
            self._release(slot)
        return force_tokens(logits, rows, tokens)


class ThinkingBudgetV2(V2RuleProcessor):
    """Budget forcing (:class:`~reasonexit.step_rules.budget.BudgetRule`) on Model Runner V2."""

    rule = BudgetRule
