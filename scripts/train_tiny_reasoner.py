#!/usr/bin/env python
"""Build the tokenizer and train the bundled tiny reasoning model from scratch (CPU).

The result is a Qwen3-architecture checkpoint of a few million parameters with its own byte-level
BPE tokenizer, trained with TRL's ``SFTTrainer`` on synthetic arithmetic traces from
:mod:`reasonexit.data.synthetic`. It learns to think inside ``<think> ... </think>``, to reach an
answer, to keep re-checking it with "Wait" / "Hmm" / "Alternatively" passages (overthinking),
and to close with a ``\\boxed{N}`` answer. vLLM serves it natively.

Train the testbed (1600 steps, about 38 minutes on 2 quiet CPU cores; deterministic for a seed)::

    python scripts/train_tiny_reasoner.py --out reasonexit/assets/tiny_reasoner

On a slower machine, ``--steps 3200 --max-minutes 40`` anneals the learning rate by time and stops
on time instead (not reproducible bit for bit: where it stops depends on the machine's speed). The
committed checkpoint was trained that way on 2 quiet cores and stopped at step 1641
(``training_info.json`` records the command).

Smoke run of the whole pipeline (2-3 minutes)::

    python scripts/train_tiny_reasoner.py --quick --out /tmp/tiny_quick

The hard testbed (``reasonexit/assets/tiny_reasoner_hard``; see ``docs/testbed.md``) is trained on
the hard problems and traces of :mod:`reasonexit.data.synthetic_hard`, with a share of examples that
ask for the answer partway through the thinking (about 1.1 s a step at batch 16 on 2 quiet cores, so the time
budget ends it and anneals the learning rate; the bundled one stopped at step 3122)::

    python scripts/train_tiny_reasoner.py --hard --probe-share 0.3 --batch-size 16 --steps 3200 --max-minutes 58
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

from reasonexit.data.prompts import format_prompt  # noqa: E402
from reasonexit.data.synthetic import completion_text, generate_problems, make_trace  # noqa: E402
from reasonexit.data.synthetic_hard import (  # noqa: E402
    generate_hard_problems,
    make_hard_trace,
    make_probe_example,
)

# Qwen2/Qwen3 pre-tokenizer split: words with an optional leading non-letter, single digits,
# punctuation runs with their trailing newlines, newline runs ("\n\n" stays one piece).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]  # added tokens, not special: they survive skip_special_tokens

# ChatML, DeepSeek-R1-distill style: the generation prompt opens the thinking block. Earlier
# assistant turns are rendered without their thinking.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- set content = message['content'] -%}"
    "{%- if '</think>' in content -%}{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n<think>\\n' -}}{%- endif -%}"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="default: reasonexit/assets/tiny_reasoner(_hard)")
    p.add_argument("--hard", action="store_true", help="train the hard testbed (reasonexit.data.synthetic_hard)")
    p.add_argument(
        "--probe-share",
        type=float,
        default=0.25,
        help="--hard: extra examples, as a share of the problems, that ask for the answer partway through",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 1600, quick: 60)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop training after this many minutes")
    p.add_argument("--quick", action="store_true", help="tiny smoke run of the whole pipeline (2-3 minutes)")
    p.add_argument("--n-train", type=int, default=None, help="training problems (default: steps * batch)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in plain float32")
    # float32: the bundled testbed runs on CPUs, many without native bfloat16
    p.add_argument("--save-dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--save-every", type=int, default=0, help="also keep trainer checkpoints every N steps")
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="continue training this checkpoint (its tokenizer and weights) instead of starting from scratch; "
        "use a different --seed so it sees new problems",
    )
    p.add_argument("--work-dir", type=Path, default=None, help="trainer scratch dir (default: a temp dir)")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 60 if args.quick else 1600
    if args.quick:
        args.vocab_size = min(args.vocab_size, 1000)
    if args.n_train is None:
        args.n_train = args.steps * args.batch_size
        if args.hard:  # the probe examples fill the rest of the batches
            args.n_train = int(args.n_train / (1 + args.probe_share))
    if args.out is None:
        args.out = REPO / "reasonexit" / "assets" / ("tiny_reasoner_hard" if args.hard else "tiny_reasoner")
    return args


def build_examples(n: int, seed: int) -> list[dict]:
    """Training problems with one sampled trace each (thinking, answer and the problem itself)."""
    problems = generate_problems(n, split="train", seed=seed)
    out = []
    for prob in problems:
        rng = random.Random(f"trace|{seed}|{prob['id']}")
        thinking, answer = make_trace(prob, rng)
        completion = completion_text(thinking, answer) + "<|im_end|>"
        out.append({"problem": prob["problem"], "head": "", "marker": "", "completion": completion})
    return out


def build_hard_examples(n: int, seed: int, probe_share: float) -> list[dict]:
    """Hard problems with one trace each, plus probe examples (``prefix`` goes to the prompt)."""
    problems = generate_hard_problems(n, split="train", seed=seed)
    out = []
    for prob in problems:
        rng = random.Random(f"hard-trace|{seed}|{prob['id']}")
        thinking, answer = make_hard_trace(prob, rng)
        completion = completion_text(thinking, answer) + "<|im_end|>"
        out.append({"problem": prob["problem"], "head": "", "marker": "", "completion": completion})
        if rng.random() < probe_share:
            probe = make_probe_example(prob, thinking, rng)
            if probe is not None:
                head, marker, target = probe
                out.append({"problem": prob["problem"], "head": head, "marker": marker, "completion": target})
    return out


def tokenize_examples(tokenizer, examples: list[dict]) -> list[dict]:
    """Token ids and loss mask per example, the pieces tokenized as vLLM sees them.

    The prompt, the probed thinking (generated tokens), the probe's inducer or early closing and
    the completion are tokenized separately, as the engine receives them.
    """
    rows = []
    for e in examples:
        ids = tokenizer(render_prompt(tokenizer, e["problem"]), add_special_tokens=False)["input_ids"]
        for piece in (e["head"], e["marker"]):
            if piece:
                ids = ids + tokenizer(piece, add_special_tokens=False)["input_ids"]
        completion = tokenizer(e["completion"], add_special_tokens=False)["input_ids"]
        rows.append({"input_ids": ids + completion, "completion_mask": [0] * len(ids) + [1] * len(completion)})
    return rows


def build_tokenizer(texts: list[str], vocab_size: int):
    """Train a byte-level BPE (single digits) and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(tokenizer, out: Path) -> None:
    """Save the tokenizer, with the chat template also inside ``tokenizer_config.json``.

    transformers 5 writes the template to ``chat_template.jinja``; older loaders only read it from
    ``tokenizer_config.json``, so it goes in both (same text), with a class name every version knows.
    """
    tokenizer.save_pretrained(out)
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = CHAT_TEMPLATE
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def render_prompt(tokenizer, problem: str) -> str:
    """The exact prompt text the model sees: the math template in the chat template, thinking opened."""
    messages = [{"role": "user", "content": format_prompt(problem, "math")}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def build_model(args: argparse.Namespace, tokenizer):
    """A freshly initialized small Qwen3 model."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    return Qwen3ForCausalLM(config)


def main(argv: list[str] | None = None) -> int:
    """Generate data, build the tokenizer, train, save and sanity-check the checkpoint."""
    args = parse_args(argv)
    t0 = time.time()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_DISABLED", "true")

    import torch
    from datasets import Dataset
    from transformers import GenerationConfig, TrainerCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(args.threads)
    set_seed(args.seed)

    print(f"[data] generating {args.n_train} training problems and traces (seed {args.seed})", flush=True)
    if args.hard:
        examples = build_hard_examples(args.n_train, args.seed, args.probe_share)
    else:
        examples = build_examples(args.n_train, args.seed)

    if args.init_from is None:
        print(f"[tokenizer] training byte-level BPE, vocab {args.vocab_size}", flush=True)
        tok_texts = [f"user\n{format_prompt(e['problem'], 'math')}\nassistant\n" for e in examples[:20000]]
        tok_texts += [e["head"] + e["marker"] + e["completion"].replace("<|im_end|>", "") for e in examples[:20000]]
        tokenizer = build_tokenizer(tok_texts, args.vocab_size)
    else:
        from transformers import AutoTokenizer

        print(f"[tokenizer] reusing the tokenizer of {args.init_from}", flush=True)
        tokenizer = AutoTokenizer.from_pretrained(str(args.init_from))

    if args.hard:
        rows = tokenize_examples(tokenizer, examples)
    else:
        rows = [{"prompt": render_prompt(tokenizer, e["problem"]), "completion": e["completion"]} for e in examples]
    dataset = Dataset.from_list(rows)

    if args.init_from is None:
        model = build_model(args, tokenizer)
    else:
        from transformers import AutoModelForCausalLM

        print(f"[model] continuing training from {args.init_from}", flush=True)
        model = AutoModelForCausalLM.from_pretrained(str(args.init_from), dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[model] Qwen3 {model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, "
          f"vocab {len(tokenizer)}: "
          f"{n_params / 1e6:.2f}M parameters", flush=True)

    # Learning-rate schedule: linear warmup, then cosine decay to 5% over the training "progress".
    # Progress is steps / --steps, or, with --max-minutes, whichever is further along of that and
    # elapsed / budget: on a slow or busy machine the schedule still anneals fully and training
    # stops on time (at the cost of bit-for-bit reproducibility, which plain --steps keeps).
    clock = {"start": None}

    def progress(step: int) -> float:
        frac = step / args.steps
        if args.max_minutes is not None and clock["start"] is not None:
            frac = max(frac, (time.time() - clock["start"]) / (60 * args.max_minutes))
        return min(1.0, frac)

    warmup = max(1, int(0.04 * args.steps))

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress(step)))

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if param.ndim >= 2 and "norm" not in name else no_decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    class Budget(TrainerCallback):
        """Start the clock with training; stop once the schedule's progress reaches 1."""

        def on_train_begin(self, targs, state, control, **kwargs):  # noqa: D102
            clock["start"] = time.time()

        def on_step_end(self, targs, state, control, **kwargs):  # noqa: D102
            if state.global_step < args.steps and progress(state.global_step) >= 1.0:
                print(f"\n[train] time budget of {args.max_minutes} min used up at step {state.global_step}")
                control.should_training_stop = True
            return control

    work_dir = args.work_dir or Path("/tmp") / f"tiny_reasoner_run_{os.getpid()}"
    config = SFTConfig(
        output_dir=str(work_dir),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        max_grad_norm=1.0,
        logging_steps=10 if args.quick else 25,
        save_strategy="steps" if args.save_every else "no",
        save_steps=args.save_every or 500,
        save_only_model=True,
        report_to="none",
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=True,
        bf16=args.bf16,  # CPU autocast to bfloat16: about 2x faster than float32 on AVX512-BF16 cores
        fp16=False,
        max_length=1024,
        completion_only_loss=True,
        packing=False,
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
        dataset_num_proc=None,
        disable_tqdm=False,
    )
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
        callbacks=[Budget()],
        optimizers=(optimizer, scheduler),
    )
    n_tok = sum(len(x) for x in trainer.train_dataset["input_ids"])
    print(f"[data] {len(dataset)} examples, {n_tok} tokens ({n_tok / len(dataset):.0f} per example)", flush=True)
    t_train = time.time()
    trainer.train()
    train_min = (time.time() - t_train) / 60
    print(f"[train] done in {train_min:.1f} min", flush=True)

    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = trainer.model
    model.config.use_cache = True
    dtype = torch.bfloat16 if args.save_dtype == "bfloat16" else torch.float32
    model.to(dtype)
    model.config.dtype = args.save_dtype
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    meta = {
        "description": "Tiny Qwen3 reasoning testbed model trained from scratch on "
        + ("reasonexit.data.synthetic_hard traces." if args.hard else "reasonexit.data.synthetic traces."),
        "command": "python scripts/train_tiny_reasoner.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed,
        "init_from": str(args.init_from) if args.init_from else None,
        "steps_done": trainer.state.global_step,
        "max_minutes": args.max_minutes,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "n_train_problems": args.n_train,
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "train_minutes": round(train_min, 1),
        "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
    }
    (out / "training_info.json").write_text(json.dumps(meta, indent=2) + "\n")
    if args.work_dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)

    # Sanity check with plain transformers generation on two validation problems.
    model.to(torch.float32).eval()
    check = generate_hard_problems if args.hard else generate_problems
    for prob in check(2, split="validation", seed=args.seed):
        prompt = render_prompt(tokenizer, prob["problem"])
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=400, do_sample=False)
        text = tokenizer.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=False)
        print(f"\n[check] gold {prob['answer']} | {prob['problem']}\n{text}")
    print(f"\n[done] saved to {out} in {(time.time() - t0) / 60:.1f} min total (seed {args.seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
