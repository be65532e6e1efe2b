"""S-GRPO rollouts for TRL's ``GRPOTrainer(rollout_func=...)`` and the reward functions that score them.

TRL's sampler repeats each prompt ``num_generations`` times in a row, and every process gets a
contiguous slice of whole groups (the recipe checks the batch geometry). With ``num_generations =
m + 1`` each run of identical prompts is one serial group: the rollout generates one full rollout
for it, truncates that at ``m`` exit positions, appends the answer inducer and generates the answers
of all branches in one batch, and returns the ``m`` branches (by exit position) followed by the full
rollout. Extra fields (exit positions, group ids, answer text) travel to the reward function, which
grades the answers and applies the decaying rewards; TRL then subtracts the group mean
(``scale_rewards="none"``).

Generation backends:

``transformers``
    The policy model's own ``generate`` (works on any device).
``vllm``
    TRL's vLLM (``use_vllm=True``, colocate or server mode). TRL pushes the current weights to vLLM
    before calling the rollout at every step.
``vllm-cpu``
    An in-process vLLM engine of the rollout's own (:class:`LocalVLLMGenerate`), for CPU machines,
    where TRL's weight push does not work with the CPU build of vLLM.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from ..data.answers import extract_answer, grade
from ..thinking import ThinkingMarkers, chat_prompt_ids, split_completion
from .sgrpo import GroupMember, build_branch, choose_exit_positions, group_advantages, serial_group_rewards

__all__ = [
    "GenerateFn",
    "make_outcome_reward",
    "make_rollout_func",
    "make_sgrpo_reward",
    "prompt_token_ids",
    "transformers_generate",
    "vllm_generate",
]

#: ``generate(trainer, prompt_ids_list, max_new_tokens) -> (completion_ids_list, logprobs_list | None)``
GenerateFn = Callable[[Any, list[list[int]], int], tuple[list[list[int]], list[list[float]] | None]]


def prompt_token_ids(tokenizer: Any, prompt: str | Sequence[dict[str, str]]) -> list[int]:
    """Token ids of a prompt (a chat message list, or a user message string) with the chat template."""
    return chat_prompt_ids(tokenizer, prompt)


# ------------------------------------------------------------------------------------------ backends
def transformers_generate(trainer: Any, prompts: list[list[int]], max_new_tokens: int):
    """Sample completions with the policy model's own ``generate`` (TRL's non-vLLM path, batched).

    Returns completion ids cut after the first end-of-sequence token (kept), and no logprobs: TRL
    then uses the policy's own log-probabilities as the old ones, as in its built-in path.
    """
    import torch
    from transformers import GenerationConfig
    from trl.models import unwrap_model_for_generation

    if not prompts:
        return [], None
    tok = trainer.processing_class
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else trainer.eos_token_ids[0]
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids) :] = 1
    device = trainer.accelerator.device
    args = trainer.args
    sample = args.temperature > 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=args.temperature if sample else None,
        top_p=args.top_p if sample else None,
        top_k=args.top_k if sample and args.top_k else None,
        eos_token_id=list(trainer.eos_token_ids),
        pad_token_id=pad_id,
        disable_compile=True,
    )
    with (
        unwrap_model_for_generation(
            trainer.model_wrapped,
            trainer.accelerator,
            gather_deepspeed3_params=args.ds3_gather_for_generation,
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
        ) as model,
        torch.no_grad(),
    ):
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config
        )
    eos = set(trainer.eos_token_ids)
    completions: list[list[int]] = []
    for row in out[:, width:].tolist():
        ids: list[int] = []
        for t in row:
            ids.append(t)
            if t in eos:
                break
        else:
            while ids and ids[-1] == pad_id and pad_id not in eos:
                ids.pop()
        completions.append(ids)
    return completions, None


def vllm_generate(trainer: Any, prompts: list[list[int]], max_new_tokens: int):
    """Sample completions with TRL's vLLM (colocate or server), one completion per prompt.

    TRL has already synced the policy weights into vLLM for this step before calling the rollout.
    ``num_generations=1`` because the serial group needs one rollout per prompt, not TRL's ``n``.
    """
    if not prompts:
        return [], None
    vg = trainer.vllm_generation
    old = vg.max_completion_length
    vg.max_completion_length = max_new_tokens
    try:
        _, completion_ids, logprobs, _ = vg.generate(prompts=prompts, images=None, num_generations=1)
    finally:
        vg.max_completion_length = old
    lps = None if logprobs is None else [[step[0] for step in seq] for seq in logprobs]
    return [list(c) for c in completion_ids], lps


def _retie_lm_head(llm: Any) -> None:
    """Point a tied LM head back at the reloaded embedding and rebuild its CPU GEMM.

    A tied checkpoint has no ``lm_head.weight``, so vLLM's in-place reload restores the head's old
    kernel tensors ("ParallelLMHead: Failed to load weights") and the CPU backend keeps a prepacked
    copy in ``cpu_linear``: without this, logits would keep using the starting checkpoint's head.
    """
    import torch

    model = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is None or embed is None or head is embed:
        return
    with torch.no_grad():
        head.weight.data = embed.weight.data
    if hasattr(head, "cpu_linear"):
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        dispatch_cpu_unquantized_gemm(head, remove_weight=False)


class LocalVLLMGenerate:
    """An in-process vLLM engine owned by the rollout (the CPU vLLM route), kept in step with the policy.

    TRL's colocate mode cannot push weights into the CPU build of vLLM (its per-parameter
    ``load_weights`` hits parameters the CPU backend has already repacked), so this backend calls
    vLLM's own in-place ``reload_weights`` with the policy's current parameters whenever the
    trainer's step has moved since the last sync, re-ties a tied LM head (see :func:`_retie_lm_head`)
    and resets the prefix cache.
    """

    def __init__(self, model: str, max_model_len: int, seed: int = 0, dtype: str = "float32") -> None:
        self.model = model
        self.max_model_len = max_model_len
        self.seed = seed
        self.dtype = dtype
        self.llm: Any = None
        self.synced_step: int | None = None
        self.sync_seconds = 0.0

    def _engine(self) -> Any:
        if self.llm is None:
            import os

            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: weights reachable
            from vllm import LLM

            from ..engine.platform import set_cpu_kv_cache

            set_cpu_kv_cache(None, default=1)  # the rollout engine sits beside the policy being trained

            self.llm = LLM(
                model=self.model,
                dtype=self.dtype,
                max_model_len=self.max_model_len,
                enforce_eager=True,
                enable_prefix_caching=True,
                seed=self.seed,
                disable_log_stats=True,
            )
        return self.llm

    def sync(self, trainer: Any) -> None:
        """Copy the policy's current weights into the engine."""
        import time

        import torch

        t0 = time.perf_counter()
        llm = self._engine()
        policy = trainer.accelerator.unwrap_model(trainer.model)
        dtype = getattr(torch, self.dtype)
        weights = [(name, p.detach().to("cpu", dtype)) for name, p in policy.named_parameters()]
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        if getattr(policy.config, "tie_word_embeddings", False):
            _retie_lm_head(llm)
        llm.reset_prefix_cache()
        self.synced_step = trainer.state.global_step
        self.sync_seconds += time.perf_counter() - t0

    def __call__(self, trainer: Any, prompts: list[list[int]], max_new_tokens: int):
        """Generate one sampled completion per prompt, with the sampled tokens' logprobs."""
        if not prompts:
            return [], None
        from vllm import SamplingParams

        if self.synced_step != trainer.state.global_step:
            self.sync(trainer)
        args = trainer.args
        params = SamplingParams(
            n=1,
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=max_new_tokens,
            logprobs=0,
            stop_token_ids=list(trainer.eos_token_ids),
        )
        outs = self._engine().generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        ids, lps = [], []
        for out in outs:
            comp = out.outputs[0]
            toks = list(comp.token_ids)
            ids.append(toks)
            lps.append([float(step[t].logprob) for step, t in zip(comp.logprobs, toks, strict=True)])
        return ids, lps


def pick_backend(trainer: Any) -> GenerateFn:
    """The generation function matching the trainer: vLLM when TRL runs one, else ``generate``."""
    return vllm_generate if getattr(trainer, "use_vllm", False) else transformers_generate


# ------------------------------------------------------------------------------------------ rollout
def _groups(prompts: list[Any], size: int) -> list[Any]:
    if len(prompts) % size:
        raise RuntimeError(
            f"the rollout got {len(prompts)} prompts, not a multiple of the serial group size {size}; "
            "per_device_train_batch_size x steps_per_generation must be a multiple of num_exits + 1"
        )
    heads = []
    for start in range(0, len(prompts), size):
        chunk = prompts[start : start + size]
        if any(p != chunk[0] for p in chunk[1:]):
            raise RuntimeError("a serial group spans different prompts: TRL's grouping does not match the rollout")
        heads.append(chunk[0])
    return heads


def make_rollout_func(
    tokenizer: Any,
    markers: ThinkingMarkers,
    *,
    num_exits: int,
    inducer: str,
    answer_max_tokens: int,
    max_completion_tokens: int,
    exit_sampling: str = "random",
    shared_prefix: str = "branches",
    seed: int = 0,
    generate: GenerateFn | None = None,
) -> Callable[[list[Any], Any], dict[str, Any]]:
    """Build the S-GRPO ``rollout_func`` for ``GRPOTrainer``.

    ``inducer`` is the answer-inducer text with ``{think_end}`` already filled in. ``generate``
    defaults to the backend matching the trainer (:func:`pick_backend`). Exit positions are drawn
    from an RNG seeded by ``(seed, global step, process index)``, so a resumed run draws the same ones.
    """
    if not markers.has_thinking:
        raise ValueError("S-GRPO needs a model with a thinking span (no end-of-thinking marker was found)")
    inducer_ids = list(tokenizer.encode(inducer, add_special_tokens=False))
    group_size = num_exits + 1

    def rollout(prompts: list[Any], trainer: Any) -> dict[str, Any]:
        gen = generate or pick_backend(trainer)
        rng = random.Random(f"sgrpo|{seed}|{trainer.state.global_step}|{trainer.accelerator.process_index}")
        heads = _groups(prompts, group_size)
        head_ids = [prompt_token_ids(tokenizer, p) for p in heads]
        full_ids, full_lps = gen(trainer, head_ids, max_completion_tokens)

        # Truncate every full rollout at its exit positions and generate all branch answers in one batch.
        plans: list[tuple[int, int, int]] = []  # (group, thinking_start, exit)
        branch_prompts: list[list[int]] = []
        full_members: list[GroupMember] = []
        for g, ids in enumerate(full_ids):
            split = split_completion(ids, markers)
            thinking = split.thinking_tokens
            answer = ids[split.answer_start :] if split.closed else []
            lps = None if full_lps is None else list(full_lps[g])
            full_members.append(GroupMember(list(ids), [1] * len(ids), lps, thinking, True, list(answer), thinking))
            for p in choose_exit_positions(thinking, num_exits, rng, exit_sampling):
                plans.append((g, split.thinking_start, p))
                branch_prompts.append(head_ids[g] + list(ids[: split.thinking_start + p]) + inducer_ids)
        answers, answer_lps = gen(trainer, branch_prompts, answer_max_tokens)

        out: dict[str, list[Any]] = {
            k: []
            for k in (
                "prompt_ids",
                "completion_ids",
                "logprobs",
                "env_mask",
                "sgrpo_group",
                "sgrpo_exit",
                "sgrpo_full",
                "sgrpo_answer",
                "sgrpo_thinking_tokens",
            )
        }
        members_by_group: list[list[GroupMember]] = [[] for _ in heads]
        for k, (g, start, p) in enumerate(plans):
            alps = None if answer_lps is None else answer_lps[k]
            members_by_group[g].append(
                build_branch(
                    full_ids[g],
                    None if full_lps is None else full_lps[g],
                    start,
                    p,
                    inducer_ids,
                    answers[k],
                    alps,
                    shared_prefix,
                )
            )
        have_lps = full_lps is not None and answer_lps is not None
        for g, members in enumerate(members_by_group):
            for member in [*members, full_members[g]]:
                out["prompt_ids"].append(head_ids[g])
                out["completion_ids"].append(member.completion_ids)
                out["logprobs"].append(member.logprobs)
                out["env_mask"].append(member.env_mask)
                out["sgrpo_group"].append(g)
                out["sgrpo_exit"].append(member.exit)
                out["sgrpo_full"].append(member.is_full)
                out["sgrpo_answer"].append(tokenizer.decode(member.answer_ids, skip_special_tokens=True))
                out["sgrpo_thinking_tokens"].append(member.thinking_tokens)
        if not have_lps:
            out["logprobs"] = None  # type: ignore[assignment]
        return out

    rollout.backend = generate  # type: ignore[attr-defined]  # None: picked per trainer (pick_backend)
    return rollout


def make_parallel_rollout_func(
    tokenizer: Any, *, max_completion_tokens: int, generate: GenerateFn
) -> Callable[[list[Any], Any], dict[str, Any]]:
    """Plain GRPO's parallel group as a ``rollout_func``: one independent sample per (repeated) prompt.

    Only needed to run the GRPO baseline on a backend TRL does not drive itself (``vllm-cpu``); with
    ``transformers`` or ``vllm`` the baseline uses TRL's own generation.
    """

    def rollout(prompts: list[Any], trainer: Any) -> dict[str, Any]:
        prompt_ids = [prompt_token_ids(tokenizer, p) for p in prompts]
        completion_ids, logprobs = generate(trainer, prompt_ids, max_completion_tokens)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}

    rollout.backend = generate  # type: ignore[attr-defined]
    return rollout


# ------------------------------------------------------------------------------------------ rewards
def _graded(answers: Sequence[str], gold: Sequence[str], kind: Sequence[str] | None) -> list[bool]:
    kinds = kind if kind is not None else ["math"] * len(answers)
    return [grade(extract_answer(a, k), g, k) for a, g, k in zip(answers, gold, kinds, strict=True)]


def make_sgrpo_reward() -> Callable[..., list[float]]:
    """The S-GRPO reward function: grade each member's answer, then decaying rewards per serial group.

    It also logs ``sgrpo/accuracy`` and ``sgrpo/thinking_tokens`` of the full rollouts (the model's
    unforced behaviour), ``sgrpo/exit_accuracy`` of the truncated branches and ``sgrpo/advantage_full``
    (mean advantage of the full rollout: negative once early exits already answer correctly).
    """

    def sgrpo_reward(
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]],
        *,
        gold: list[str],
        sgrpo_group: list[int],
        sgrpo_exit: list[int],
        sgrpo_full: list[bool],
        sgrpo_answer: list[str],
        sgrpo_thinking_tokens: list[int],
        kind: list[str] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **_: Any,
    ) -> list[float]:
        correct = _graded(sgrpo_answer, gold, kind)
        rewards = [0.0] * len(correct)
        groups: dict[int, list[int]] = {}
        for i, g in enumerate(sgrpo_group):
            groups.setdefault(g, []).append(i)
        adv_full: list[float] = []
        for idx in groups.values():
            if sum(bool(sgrpo_full[i]) for i in idx) != 1:
                raise RuntimeError("a serial group must hold exactly one full rollout")
            r = serial_group_rewards(
                [correct[i] for i in idx], [sgrpo_exit[i] for i in idx], [sgrpo_full[i] for i in idx]
            )
            for i, value in zip(idx, r, strict=True):
                rewards[i] = value
            adv = group_advantages(r)
            adv_full.extend(a for i, a in zip(idx, adv, strict=True) if sgrpo_full[i])
        if log_metric is not None:
            full = [i for i, f in enumerate(sgrpo_full) if f]
            branch = [i for i, f in enumerate(sgrpo_full) if not f]
            log_metric("sgrpo/accuracy", sum(correct[i] for i in full) / max(1, len(full)))
            log_metric("sgrpo/thinking_tokens", sum(sgrpo_thinking_tokens[i] for i in full) / max(1, len(full)))
            log_metric("sgrpo/completion_tokens", sum(len(completion_ids[i]) for i in full) / max(1, len(full)))
            if branch:
                log_metric("sgrpo/exit_accuracy", sum(correct[i] for i in branch) / len(branch))
            log_metric("sgrpo/advantage_full", sum(adv_full) / max(1, len(adv_full)))
        return rewards

    return sgrpo_reward


def make_outcome_reward(tokenizer: Any, markers: ThinkingMarkers) -> Callable[..., list[float]]:
    """Plain GRPO's outcome reward: 1 for a correct final answer (after the thinking), else 0.

    Logs ``sgrpo/accuracy``, ``sgrpo/thinking_tokens`` and ``sgrpo/completion_tokens`` under the same
    names as S-GRPO so the two runs compare directly.
    """

    def outcome_reward(
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]],
        *,
        gold: list[str],
        kind: list[str] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **_: Any,
    ) -> list[float]:
        answers, thinking = [], []
        for ids in completion_ids:
            split = split_completion(ids, markers)
            answer = ids[split.answer_start :] if split.closed else []
            answers.append(tokenizer.decode(answer, skip_special_tokens=True))
            thinking.append(split.thinking_tokens)
        correct = _graded(answers, gold, kind)
        if log_metric is not None:
            n = max(1, len(correct))
            log_metric("sgrpo/accuracy", sum(correct) / n)
            log_metric("sgrpo/thinking_tokens", sum(thinking) / n)
            log_metric("sgrpo/completion_tokens", sum(len(c) for c in completion_ids) / n)
        return [1.0 if c else 0.0 for c in correct]

    return outcome_reward
