"""``scripts/train_tiny_reasoner.py``'s data path for both testbeds: examples, tokenizer and the
loss mask, built as the script builds them before training (no training: that takes minutes)."""

from __future__ import annotations

import pytest
from conftest import load_script

from reasonexit.data.synthetic_hard import PROBE_INDUCER


@pytest.fixture(scope="module")
def tt():
    return load_script("train_tiny_reasoner")


@pytest.mark.parametrize("hard", [False, True])
def test_examples_tokenize_with_the_completion_alone_in_the_loss(tt, hard):
    examples = tt.build_hard_examples(60, 0, 0.5) if hard else tt.build_examples(60, 0)
    texts = [e["problem"] for e in examples] + [e["head"] + e["marker"] + e["completion"] for e in examples]
    tokenizer = tt.build_tokenizer(texts, 600)
    rows = tt.tokenize_examples(tokenizer, examples)
    assert len(rows) == len(examples)
    probes = 0
    for e, row in zip(examples, rows, strict=True):
        mask = row["completion_mask"]
        assert len(mask) == len(row["input_ids"])
        n_loss = sum(mask)
        assert mask == [0] * (len(mask) - n_loss) + [1] * n_loss  # prompt first, then only the completion
        learned = tokenizer.decode(row["input_ids"][-n_loss:])
        assert learned == e["completion"]
        assert learned.endswith("<|im_end|>") or e["marker"] == PROBE_INDUCER
        probes += bool(e["head"])
    # the probe examples exist only on the hard testbed
    assert (probes > 0) == hard


def test_the_quick_testbed_defaults_build_its_first_examples(tt):
    args = tt.parse_args(["--out", "/tmp/unused"])
    assert (args.steps, args.batch_size, args.n_train) == (1600, 32, 1600 * 32)
    first = tt.build_examples(2, args.seed)
    assert first[0]["completion"].count("</think>") == 1 and "\\boxed{" in first[0]["completion"]
