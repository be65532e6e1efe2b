"""``scripts/train_verifier.py`` (FlashThink's FT² verifier): labels from real exits, never the gold
in the input, and training deterministic for a seed (on the test session's engine)."""

from __future__ import annotations

import pytest
from conftest import load_script

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tv():
    return load_script("train_verifier")


@pytest.fixture(scope="module")
def labelled(tv, session):
    args = tv.parse_args(["--n-problems", "8", "--max-tokens", "384", "--out", "/tmp/unused"])
    rows, stats = tv.collect(args, session)
    return args, rows, stats


def test_labels_come_from_real_exits_at_every_boundary(tv, session, labelled):
    from reasonexit.methods.flashthink import _Chunks
    from reasonexit.thinking import split_completion

    args, rows, stats = labelled
    assert rows and stats["boundaries"] == sum(len(r["cuts"]) for r in rows) > 0
    chunks = _Chunks(session, args.delimiters)
    for r in rows:
        comp = r["completion_ids"]
        split = split_completion(comp, session.markers)
        expected = [
            n
            for n in range(split.thinking_start + 1, split.thinking_end + 1)
            if chunks.ends_chunk(comp[:n], split.thinking_start)
        ]
        assert [n for n, _ in r["cuts"]] == expected
    # Early exits are sometimes wrong and late ones mostly right on the testbed: both labels occur.
    labels = [ok for r in rows for _, ok in r["cuts"]]
    assert any(labels) and not all(labels)


def test_examples_hold_question_and_reasoning_only(tv, session, labelled):
    from reasonexit.data.datasets import load_problems
    from reasonexit.runs.runner import jobs_for

    args, rows, _ = labelled
    problems = {p.id: p for p in load_problems("synthetic", limit=8, split="train", synthetic_seed=args.seed)}
    for r in rows:
        (ex,) = tv.examples(r, [], 91, 80, 0)
        cut = max(n for n, _ in r["cuts"])
        assert ex["input_ids"][: len(r["prompt_ids"]) + cut] == [*r["prompt_ids"], *r["completion_ids"][:cut]]
        assert sum(t != -100 for t in ex["labels"]) == len(r["cuts"])
        # The prompt is the question alone, as the eval prompt builds it (no gold), and the input
        # stops at the last boundary, before the model's own answer.
        job = jobs_for(session, [problems[r["problem"]]])[0]
        assert r["prompt_ids"] == list(job.prompt_ids)


def test_training_is_deterministic_for_a_seed(tv, session, labelled, tmp_path):
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    args, rows, _ = labelled
    args.epochs, args.batch_size = 1.0, 4
    tok = AutoTokenizer.from_pretrained(session.config.model)
    data = Dataset.from_list([ex for r in rows for ex in tv.examples(r, [], 91, 80, tok.eos_token_id)])

    def weights(seed: int) -> dict[str, torch.Tensor]:
        args.seed = seed
        model = tv.fit_verifier(args, data, session.config.model, tok, tmp_path / f"run{seed}").model
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the seed matters (data order, dropout-free init)
