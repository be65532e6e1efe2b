#!/usr/bin/env python
"""Time one S-GRPO rollout (full rollouts + all branch answers) on each CPU generation backend.

``transformers``: the policy model's own ``generate`` (batched, KV cache).
``vllm-cpu``: an in-process vLLM CPU engine with the policy's weights reloaded before every rollout,
as in training (the reload time is included and also reported on its own).

The loss forward/backward of a training step is the same for both, so only the rollout is timed::

    python scripts/bench_sgrpo_backends.py --model reasonexit/assets/tiny_reasoner --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def logprob_gap(trainer, out) -> float:
    """Mean |vLLM logprob - policy logprob| over the full rollouts' tokens (checks the weight sync)."""
    import torch

    model = trainer.accelerator.unwrap_model(trainer.model)
    gaps = []
    for prompt, ids, lps, full in zip(
        out["prompt_ids"], out["completion_ids"], out["logprobs"], out["sgrpo_full"], strict=True
    ):
        if not full or not ids:
            continue
        x = torch.tensor([list(prompt) + list(ids)])
        with torch.no_grad():
            logits = model(input_ids=x).logits[0, len(prompt) - 1 : -1].float()
        ref = torch.log_softmax(logits / trainer.args.temperature, -1).gather(1, torch.tensor(ids)[:, None])[:, 0]
        gaps.append((ref - torch.tensor(lps)).abs().mean().item())
    return sum(gaps) / max(1, len(gaps))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a markdown table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "reasonexit" / "assets" / "tiny_reasoner"))
    p.add_argument("--groups", type=int, default=4, help="serial groups (prompts) per rollout")
    p.add_argument("--num-exits", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--answer-max-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backends", default="transformers,vllm-cpu")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    import torch

    from reasonexit.training.config import recipe_from_dict
    from reasonexit.training.trainer import build_trainer

    torch.set_num_threads(args.threads)
    group = args.num_exits + 1
    rows = []
    for backend in args.backends.split(","):
        recipe = recipe_from_dict(
            {
                "method": "sgrpo",
                "model": args.model,
                "output_dir": f"/tmp/bench_sgrpo_{backend}",
                "threads": args.threads,
                "dataset": {"name": "synthetic", "split": "train", "limit": args.groups * args.repeats, "seed": 7},
                "generation": {"backend": backend, "max_completion_tokens": args.max_tokens},
                "sgrpo": {"num_exits": args.num_exits, "answer_max_tokens": args.answer_max_tokens},
                "training": {"per_device_train_batch_size": group * args.groups, "max_steps": 1},
            },
            "bench",
        )
        t0 = time.perf_counter()
        trainer = build_trainer(recipe, quiet=True)
        problems = [row["prompt"] for row in trainer.train_dataset]
        times, tokens, syncs = [], 0, 0.0
        for r in range(-1, args.repeats):  # repeat -1 warms up (engine start, first sync)
            trainer.state.global_step = r + 1  # a new step: vllm-cpu reloads the weights, as in training
            batch = problems[(max(r, 0) * args.groups) : (max(r, 0) + 1) * args.groups]
            prompts = [pr for pr in batch for _ in range(group)]
            local = getattr(trainer.rollout_func, "backend", None)
            before = local.sync_seconds if local else 0.0
            t = time.perf_counter()
            out = trainer.rollout_func(prompts, trainer)
            dt = time.perf_counter() - t
            if r >= 0:
                times.append(dt)
                tokens += sum(
                    len(ids) for ids, full in zip(out["completion_ids"], out["sgrpo_full"], strict=True) if full
                )
                syncs += (local.sync_seconds - before) if local else 0.0
                if local is not None and r == args.repeats - 1:
                    # Move the policy away from the checkpoint, sync, and check vLLM now samples from it.
                    torch.manual_seed(0)
                    with torch.no_grad():
                        for prm in trainer.model.parameters():
                            prm.add_(torch.randn_like(prm) * 0.02)
                    trainer.state.global_step += 1
                    local.synced_step = trainer.state.global_step  # pretend synced: the engine is stale
                    stale = logprob_gap(trainer, trainer.rollout_func(prompts[:group], trainer))
                    local.synced_step = None
                    fresh = logprob_gap(trainer, trainer.rollout_func(prompts[:group], trainer))
                    print(
                        f"vllm-cpu vs policy logprob gap after a weight change: {fresh:.4f} synced, {stale:.4f} stale"
                    )
        full_tokens = tokens / args.repeats
        mean = sum(times) / len(times)
        rows.append((backend, mean, min(times), syncs / args.repeats, full_tokens, time.perf_counter() - t0))
        del trainer
    print(
        f"\nS-GRPO rollout: {args.groups} groups x (1 full rollout + {args.num_exits} branches), "
        f"max {args.max_tokens} + {args.answer_max_tokens} tokens, {args.threads} threads, {args.repeats} repeats\n"
    )
    print("| backend | mean s / rollout | best s | weight sync s | full-rollout tokens | total s (incl. start) |")
    print("|---|---|---|---|---|---|")
    for b, mean, best, sync, toks, total in rows:
        print(f"| {b} | {mean:.2f} | {best:.2f} | {sync:.2f} | {toks:.0f} | {total:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
