#!/usr/bin/env python
"""Train a FlashThink verifier (FT²) on exits taken for real in the reasoning model's own traces.

1. **Traces.** The reasoning model (vLLM) decodes greedy traces for ``--n-problems`` problems of
   ``--dataset`` (for the bundled testbed: the synthetic *train* split, never the test problems).
2. **Labels.** At every chunk boundary of a trace's thinking (``--delimiters``, as FlashThink
   splits it), thinking is closed there for real with the model's own end marker, the model writes
   its answer (greedy), and the answer is graded against the gold. The label is whether that
   answer is correct.
3. **Examples.** The verifier's input is exactly what FlashThink gives it: the chat-templated
   question and the reasoning so far (token ids), then the judging question (empty by default:
   the verifier answers right after the chunk, so one teacher-forced sequence per trace carries
   every boundary's label); the target is the first token of ``yes`` or ``no``. The gold never
   enters the input.
4. **Training.** A small causal LM is fine-tuned with TRL's ``SFTTrainer`` (loss on the answer
   token only), starting from ``--init-from`` (default: the reasoning model itself, which already
   reads these traces; the verifier must share its tokenizer). Deterministic for a seed.
5. **Check.** Verifier accuracy on held-out problems' boundaries (scored as FlashThink scores:
   P(yes) / (P(yes) + P(no))), written to ``verifier_info.json`` with the judging prompt, which
   FlashThink reads back.

The bundled testbed's verifier (600 problems, 5,093 labelled boundaries, 3 epochs)::

    python scripts/train_verifier.py --out reasonexit/assets/tiny_verifier

On 2 CPU cores shared with other work (load average 5-11) this took 24.8 minutes (1.5 collecting,
19.1 training) and gave weights bit-identical to the committed ones, trained in an earlier session
(held-out boundary accuracy 0.9197).

A real model and dataset on GPUs: the same script, e.g.::

    python scripts/train_verifier.py --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B \\
        --dataset /data/math_train.jsonl --n-problems 4000 --max-tokens 8192 \\
        --init-from Qwen/Qwen2.5-0.5B-Instruct --batch-size 8 --epochs 1 --no-cpu --bf16 \\
        --out ckpt/r1-1.5b-verifier

(``--init-from`` must share the reasoning model's tokenizer, as the Qwen2.5 family does for the R1
distills; then ``reasonexit eval --method flashthink --verifier trained --verifier-model
ckpt/r1-1.5b-verifier``.) Use a training split of the dataset, not the one you evaluate on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))


def _shown(path: str) -> str:
    """A model path as recorded: relative to the repository when inside it (hub ids unchanged)."""
    p = Path(path)
    if p.exists():
        with contextlib.suppress(ValueError):
            return str(p.resolve().relative_to(REPO))
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    from reasonexit.methods.verifiers import DEFAULT_JUDGE_PROMPT

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="reasoning model (default: the bundled testbed)")
    p.add_argument("--dataset", default="synthetic", help="dataset with gold answers (a training split)")
    p.add_argument("--split", default="train", help="dataset split (synthetic: train)")
    p.add_argument("--n-problems", type=int, default=600, help="problems whose traces are labelled")
    p.add_argument("--holdout", type=float, default=0.1, help="share of problems held out for the check")
    p.add_argument("--max-tokens", type=int, default=1024, help="trace length limit")
    p.add_argument("--answer-tokens", type=int, default=48, help="tokens of answer after a real exit")
    p.add_argument("--delimiters", default="\\n\\n", help="chunk delimiters, comma-separated (as flashthink)")
    p.add_argument(
        "--judge-prompt",
        default="",
        help="judging question after the reasoning ('' (default): the verifier answers right after the "
        f"chunk, one training sequence per trace; the self verifier's is {DEFAULT_JUDGE_PROMPT!r})",
    )
    p.add_argument("--init-from", default=None, help="starting checkpoint (default: the reasoning model)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="CPU threads for training")
    p.add_argument("--no-cpu", action="store_true", help="train on the GPU when there is one")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--dtype", default="float32", help="vLLM dtype for the traces")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--recheck", action="store_true", help="only re-run the held-out check of the verifier in --out")
    args = p.parse_args(argv)
    if "\\n" in args.judge_prompt:
        args.judge_prompt = args.judge_prompt.encode().decode("unicode_escape")
    args.delimiters = tuple(d.encode().decode("unicode_escape") for d in args.delimiters.split(",") if d)
    return args


def collect(args: argparse.Namespace, session: Any = None) -> tuple[list[dict], dict]:
    """Traces, real exits at every chunk boundary, graded: one labelled example per boundary.

    ``session``: an engine session of the reasoning model to use (left open); by default one is
    started for ``--model`` and closed at the end.
    """
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from vllm import SamplingParams

    from reasonexit.data.answers import extract_answer, grade
    from reasonexit.data.datasets import load_problems
    from reasonexit.engine import DEFAULT_MODEL, EngineConfig, Usage, get_session
    from reasonexit.methods.flashthink import _Chunks
    from reasonexit.runs.runner import jobs_for
    from reasonexit.thinking import closing_ids, split_completion

    own = session is None
    if own:
        model = args.model or DEFAULT_MODEL
        session = get_session(
            EngineConfig(model=model, dtype=args.dtype, max_model_len=args.max_model_len, seed=args.seed)
        )
    model = session.config.model
    session.start()
    problems = load_problems(args.dataset, limit=args.n_problems, split=args.split, synthetic_seed=args.seed)
    jobs = jobs_for(session, problems)
    markers = session.markers
    if not markers.has_thinking:
        raise SystemExit("train_verifier: the reasoning model has no thinking span")
    eos = session.eos_ids
    greedy = dict(temperature=0.0, stop_token_ids=eos, skip_special_tokens=False, detokenize=False)
    usage = Usage()

    async def traces():
        import asyncio

        reqs = [
            session.complete(j.prompt_ids, SamplingParams(max_tokens=args.max_tokens, **greedy), usage) for j in jobs
        ]
        return await asyncio.gather(*reqs)

    t0 = time.time()
    print(f"[traces] {len(jobs)} problems of {args.dataset}/{args.split} on {model}", flush=True)
    comps = session.run(traces())
    print(f"[traces] {sum(len(c.token_ids) for c in comps)} tokens in {time.time() - t0:.0f}s", flush=True)

    chunks = _Chunks(session, args.delimiters)
    close = closing_ids(session.encode, markers)
    cuts: list[tuple[int, int]] = []  # (job index, cut)
    for i, comp in enumerate(comps):
        split = split_completion(comp.token_ids, markers)
        lo = split.thinking_start
        for n in range(lo + 1, split.thinking_end + 1):
            if chunks.ends_chunk(comp.token_ids[:n], lo):
                cuts.append((i, n))

    async def exits():
        import asyncio

        async def one(i: int, n: int):
            head = [*jobs[i].prompt_ids, *comps[i].token_ids[:n], *close]
            room = max(1, min(args.answer_tokens, session.max_model_len - len(head)))
            return await session.complete(head, SamplingParams(max_tokens=room, **greedy), usage)

        return await asyncio.gather(*(one(i, n) for i, n in cuts))

    t1 = time.time()
    print(f"[labels] exiting for real at {len(cuts)} chunk boundaries", flush=True)
    answers = session.run(exits())
    print(f"[labels] done in {time.time() - t1:.0f}s", flush=True)

    # One example per trace: its ids, and at each boundary the label of the exit taken there.
    by_trace: dict[int, list[tuple[int, bool]]] = {}
    for (i, n), ans in zip(cuts, answers, strict=True):
        text = session.decode([t for t in ans.token_ids if t not in eos])
        correct = bool(grade(extract_answer(text, jobs[i].kind), jobs[i].gold, jobs[i].kind))
        by_trace.setdefault(i, []).append((n, correct))
    rows: list[dict] = []
    for i, labelled in by_trace.items():
        rows.append(
            {
                "problem": jobs[i].id,
                "prompt_ids": list(jobs[i].prompt_ids),
                "completion_ids": list(comps[i].token_ids),
                "cuts": labelled,
            }
        )
    n_cuts = sum(len(r["cuts"]) for r in rows)
    final = [
        bool(grade(extract_answer(session.decode(c.token_ids), j.kind), j.gold, j.kind))
        for c, j in zip(comps, jobs, strict=True)
    ]
    stats = {
        "problems": len(jobs),
        "boundaries": n_cuts,
        "positive_share": round(sum(c for r in rows for _, c in r["cuts"]) / max(1, n_cuts), 4),
        "full_trace_accuracy": round(sum(final) / max(1, len(final)), 4),
        "collect_seconds": round(time.time() - t0, 1),
    }
    print(f"[labels] {stats}", flush=True)
    if own:
        session.close()
    return rows, stats


def examples(row: dict, judge: list[int], yes_tok: int, no_tok: int, pad: int) -> list[dict]:
    """Training sequences of one trace, each labelled only at its boundaries' answer tokens.

    Without a judging prompt the verifier reads the trace itself and answers at the boundary, so
    one sequence (the trace, teacher-forced) carries every boundary's label: the label of a cut at
    ``n`` sits at sequence index ``len(prompt) + n`` (predicted from the last token before the cut).
    With a judging prompt each boundary needs its own sequence (prompt, trace[:n], judge, answer).
    """
    prompt, comp = row["prompt_ids"], row["completion_ids"]
    ans = {True: yes_tok, False: no_tok}
    if not judge:
        last = max(n for n, _ in row["cuts"])
        ids = [*prompt, *comp, pad][: len(prompt) + last + 1]
        labels = [-100] * len(ids)
        for n, ok in row["cuts"]:
            labels[len(prompt) + n] = ans[ok]
        return [{"input_ids": ids, "labels": labels}]
    out = []
    for n, ok in row["cuts"]:
        ids = [*prompt, *comp[:n], *judge, ans[ok]]
        out.append({"input_ids": ids, "labels": [-100] * (len(ids) - 1) + [ans[ok]]})
    return out


def heldout_check(model, tokenizer, test: list[dict], judge: list[int], yes_tok: int, no_tok: int) -> dict:
    """Accuracy on held-out boundaries, scored as FlashThink scores (P(yes) / (P(yes) + P(no)))."""
    import torch

    from reasonexit.methods.verifiers import answer_token_ids, yes_no_score

    model = model.to(torch.float32).eval()
    texts = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    yes_ids, no_ids = answer_token_ids(texts)
    right = tp = fp = pos = n_test = 0
    with torch.no_grad():
        for r in test:
            for ex in examples(r, judge, yes_tok, no_tok, tokenizer.eos_token_id):
                lps = torch.log_softmax(model(torch.tensor([ex["input_ids"]])).logits[0].float(), -1)
                for at, tok in enumerate(ex["labels"]):
                    if tok == -100:
                        continue
                    # logits at position at-1 predict the token at ``at``
                    row = lps[at - 1]
                    score = yes_no_score([float(row[i]) for i in yes_ids], [float(row[i]) for i in no_ids])[0]
                    said, truth = score >= 0.5, tok == yes_tok
                    n_test += 1
                    right += said == truth
                    tp += said and truth
                    fp += said and not truth
                    pos += said
    return {
        "heldout_boundaries": n_test,
        "heldout_accuracy": round(right / max(1, n_test), 4),
        "heldout_precision_yes": round(tp / max(1, pos), 4),
        "heldout_yes_share": round(pos / max(1, n_test), 4),
    }


def fit_verifier(args: argparse.Namespace, data: Any, init: str, tokenizer: Any, work: Path) -> Any:
    """Fine-tune ``init`` on ``data`` (rows of ``examples``) with TRL's ``SFTTrainer``; the trainer.

    Deterministic for ``args.seed`` on CPU: the same data and arguments give the same weights
    (``tests/training/test_train_verifier.py``).
    """
    import torch
    from transformers import AutoModelForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)
    config = SFTConfig(
        output_dir=str(work),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=10,
        max_grad_norm=1.0,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=not args.no_cpu,
        bf16=args.bf16,
        max_length=args.max_model_len,
        packing=False,
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    return trainer


def main(argv: list[str] | None = None) -> int:
    """Collect labels, train, check on held-out problems, save."""
    args = parse_args(argv)
    t0 = time.time()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_DISABLED", "true")
    rows, stats = collect(args)

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasonexit.engine import DEFAULT_MODEL

    torch.set_num_threads(args.threads)  # the held-out check; fit_verifier sets the seed for training
    model_path = args.model or DEFAULT_MODEL
    init = args.init_from or model_path
    tokenizer = AutoTokenizer.from_pretrained(init)
    main_tok = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.get_vocab() != main_tok.get_vocab():
        raise SystemExit("train_verifier: --init-from must share the reasoning model's tokenizer")
    yes_tok = tokenizer.encode("yes", add_special_tokens=False)[0]
    no_tok = tokenizer.encode("no", add_special_tokens=False)[0]

    problems = sorted({r["problem"] for r in rows})
    random.Random(args.seed).shuffle(problems)
    held = set(problems[: int(len(problems) * args.holdout)])
    train = [r for r in rows if r["problem"] not in held]
    test = [r for r in rows if r["problem"] in held]
    judge = tokenizer.encode(args.judge_prompt, add_special_tokens=False)
    if args.recheck:
        # Score an already trained verifier (--out) on the same held-out problems; refresh its record.
        trained = AutoModelForCausalLM.from_pretrained(str(args.out), dtype=torch.float32)
        check = heldout_check(trained, tokenizer, test, judge, yes_tok, no_tok)
        print(f"[check] {check}", flush=True)
        info_path = args.out / "verifier_info.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        info.update(check)
        info_path.write_text(json.dumps(info, indent=2) + "\n")
        return 0
    data = Dataset.from_list([ex for r in train for ex in examples(r, judge, yes_tok, no_tok, tokenizer.eos_token_id)])
    n_tok = sum(len(x) for x in data["input_ids"])
    n_train_cuts = sum(len(r["cuts"]) for r in train)
    print(
        f"[train] {len(data)} sequences ({n_tok} tokens, {n_train_cuts} labelled boundaries) from "
        f"{len(problems) - len(held)} problems; {sum(len(r['cuts']) for r in test)} boundaries of "
        f"{len(held)} problems held out",
        flush=True,
    )

    work = Path("/tmp") / f"verifier_run_{os.getpid()}"
    t_train = time.time()
    trainer = fit_verifier(args, data, init, tokenizer, work)
    model = trainer.model
    train_min = (time.time() - t_train) / 60
    print(f"[train] done in {train_min:.1f} min", flush=True)

    check = heldout_check(trainer.model, tokenizer, test, judge, yes_tok, no_tok)
    print(f"[check] {check}", flush=True)

    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.config.use_cache = True
    model.to(torch.bfloat16)  # half the size on disk; vLLM casts to the engine's dtype
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {
        "description": "FlashThink verifier (FT2) trained by scripts/train_verifier.py on real exits "
        "at chunk boundaries of the reasoning model's own traces.",
        "command": "python scripts/train_verifier.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "reasoning_model": _shown(model_path),
        "init_from": _shown(init),
        "dataset": f"{args.dataset}/{args.split}",
        "delimiters": list(args.delimiters),
        "judge_prompt": args.judge_prompt,
        "label_tokens": {"yes": yes_tok, "no": no_tok},
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "steps": trainer.state.global_step,
        "train_minutes": round(train_min, 1),
        "total_minutes": round((time.time() - t0) / 60, 1),
        "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
        **stats,
        **check,
    }
    (out / "verifier_info.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"[done] saved to {out} in {(time.time() - t0) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
