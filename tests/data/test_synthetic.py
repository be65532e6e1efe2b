"""Tests of the synthetic problem generator, the trace builder and the bundled checkpoint files."""

from __future__ import annotations

import json
import random
import re

import pytest
from conftest import ROOT

from reasonexit.data.synthetic import (
    DIFFICULTIES,
    completion_text,
    count_rechecks,
    first_answer_position,
    generate_problems,
    make_trace,
    solve,
)

ASSET_DIR = ROOT / "reasonexit" / "assets" / "tiny_reasoner"


def _traces(n: int, seed: int = 0, split: str = "train") -> list[tuple[dict, str, str]]:
    out = []
    for prob in generate_problems(n, split=split, seed=seed):
        thinking, answer = make_trace(prob, random.Random(f"t|{prob['id']}"))
        out.append((prob, thinking, answer))
    return out


def test_public_keys_and_ids() -> None:
    probs = generate_problems(50, split="test", seed=3)
    assert len(probs) == 50
    for i, p in enumerate(probs):
        assert p["id"] == f"synth-test-3-{i}"
        assert isinstance(p["problem"], str) and p["problem"].endswith("?")
        assert isinstance(p["answer"], int) and p["answer"] >= 0
        assert p["difficulty"] in DIFFICULTIES
    assert len({p["id"] for p in probs}) == 50
    assert len({p["problem"] for p in probs}) == 50


def test_determinism_and_seed_dependence() -> None:
    a = generate_problems(40, split="test", seed=0)
    b = generate_problems(40, split="test", seed=0)
    c = generate_problems(40, split="test", seed=1)
    assert a == b
    assert [p["problem"] for p in a] != [p["problem"] for p in c]
    # A shorter set is a prefix of a longer one.
    assert generate_problems(10, split="test", seed=0) == a[:10]


def test_difficulty_knob() -> None:
    mixed = generate_problems(200, split="validation", seed=0)
    assert {p["difficulty"] for p in mixed} == set(DIFFICULTIES)
    easy = generate_problems(100, split="test", seed=0, difficulty=1)
    hard = generate_problems(100, split="test", seed=0, difficulty=4)
    assert all(p["difficulty"] == 1 for p in easy)
    assert all(p["difficulty"] == 4 for p in hard)
    assert max(len(p["steps"]) for p in easy) < min(len(p["steps"]) for p in hard)
    assert sum(p["answer"] for p in easy) < sum(p["answer"] for p in hard)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        generate_problems(3, split="dev")
    with pytest.raises(ValueError):
        generate_problems(3, difficulty=9)


def test_splits_are_disjoint() -> None:
    train = {p["problem"] for p in generate_problems(5000, split="train", seed=0)}
    train |= {p["problem"] for p in generate_problems(2000, split="train", seed=1, difficulty=1)}
    for split in ("test", "validation"):
        held_out = generate_problems(300, split=split, seed=0)
        held_out += generate_problems(300, split=split, seed=0, difficulty=1)
        assert not train & {p["problem"] for p in held_out}
    test = {p["problem"] for p in generate_problems(500, split="test", seed=0)}
    val = {p["problem"] for p in generate_problems(500, split="validation", seed=0)}
    assert not test & val


def test_answers_match_structured_steps() -> None:
    for p in generate_problems(500, split="train", seed=5):
        assert solve(p) == p["answer"]
        value = p["start"]
        for step in p["steps"]:
            assert step["before"] == value
            value = step["after"]
            assert value >= 0
        assert value == p["answer"]
        # every operand shows up in the problem text
        for step in p["steps"]:
            for key in ("a", "k", "m"):
                if key in step and step["op"] != "times" and not (step["op"] == "groups" and key == "a"):
                    assert str(step[key]) in p["problem"]


def test_traces_well_formed() -> None:
    traces = _traces(400)
    n_wait = n_fixed = 0
    for prob, thinking, answer in traces:
        boxed = re.findall(r"\\boxed\{(\d+)\}", answer)
        assert answer.endswith(f"\\boxed{{{prob['answer']}}}.")
        assert boxed == [str(prob["answer"])]
        assert "<think>" not in thinking and "</think>" not in thinking
        paras = thinking.split("\n\n")
        assert len(paras) >= 3
        assert all(para.strip() == para and para for para in paras)
        # transition words only ever open a paragraph
        for word in ("Wait", "Alternatively", "Hmm"):
            assert thinking.count(word) == sum(para.startswith(word) for para in paras)
        pos = first_answer_position(thinking, prob["answer"])
        assert pos is not None
        n_wait += count_rechecks(thinking, pos) > 0
        n_fixed += "answer is actually" in thinking
        full = completion_text(thinking, answer)
        assert full.count("</think>") == 1 and full.endswith(answer)
    assert 0.75 < n_wait / len(traces) < 0.97
    assert 0.05 < n_fixed / len(traces) < 0.2


def test_injected_mistakes_are_fixed() -> None:
    seen = 0
    for prob, thinking, _ in _traces(300, seed=2):
        if "answer is actually" not in thinking:
            continue
        seen += 1
        first = re.search(r"So the answer is (\d+)\.", thinking)
        assert first is not None and int(first.group(1)) != prob["answer"]
        fix = re.search(r"answer is actually (\d+), not (\d+)\.", thinking)
        assert fix is not None and int(fix.group(1)) == prob["answer"]
        assert thinking[: fix.start()].rfind("\n\nWait") > first.start()
        # The final answer is first reached at the fix, not at the wrong first answer.
        assert first_answer_position(thinking, prob["answer"]) == fix.end() - len(", not ") - len(fix.group(2)) - 1
    assert seen > 10


def test_recheck_count_and_order() -> None:
    counts = []
    for prob, thinking, _ in _traces(400, seed=6):
        pos = first_answer_position(thinking, prob["answer"])
        after = [p for p in thinking[pos:].split("\n\n") if p]
        counts.append(len(after))
        assert len(after) <= 5
        if "answer is actually" not in thinking and len(after) >= 2:
            assert after[0].startswith("Wait") and "starts with" in after[0]
            assert "the last step" in after[1]
        if "answer is actually" not in thinking and len(after) >= 4:
            assert "the first step" in after[3]
    # most traces re-check several times, as real reasoning models do
    assert 0.6 <= sum(3 <= c <= 5 for c in counts) / len(counts)
    assert sum(c == 0 for c in counts) / len(counts) < 0.1


def test_first_answer_position() -> None:
    text = "A has 3.\n\n3 + 4 = 7.\n\nSo the answer is 7.\n\nWait, let me check. 3 + 4 = 7. Yes, 7."
    pos = first_answer_position(text, 7)
    assert text[:pos].endswith("So the answer is 7.")
    assert count_rechecks(text, pos) == 1
    assert first_answer_position(text, 70) is None
    assert first_answer_position("so the answer is 17.", 7) is None
    assert first_answer_position("So the answer is actually 12, not 13.", "12") is not None


def test_overthinking_share() -> None:
    fracs = []
    for prob, thinking, _ in _traces(300, seed=4):
        pos = first_answer_position(thinking, prob["answer"])
        fracs.append(1 - pos / len(thinking))
    assert sum(fracs) / len(fracs) > 0.35


@pytest.mark.skipif(not (ASSET_DIR / "config.json").exists(), reason="tiny_reasoner checkpoint not committed")
def test_bundled_checkpoint_files() -> None:
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (ASSET_DIR / name).is_file(), name
    weights = list(ASSET_DIR.glob("*.safetensors"))
    assert weights and sum(w.stat().st_size for w in weights) < 30_000_000
    config = json.loads((ASSET_DIR / "config.json").read_text())
    assert config["model_type"] == "qwen3"
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    tok_config = json.loads((ASSET_DIR / "tokenizer_config.json").read_text())
    assert tok_config["eos_token"] == "<|im_end|>"
    assert "<think>" in tok_config["chat_template"]
    gen = json.loads((ASSET_DIR / "generation_config.json").read_text())
    assert gen["eos_token_id"] == config["eos_token_id"]


@pytest.mark.skipif(not (ASSET_DIR / "config.json").exists(), reason="tiny_reasoner checkpoint not committed")
def test_bundled_tokenizer_chat_template() -> None:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(ASSET_DIR))
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.endswith("<think>\n")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    # Think markers are single tokens that survive skip_special_tokens; "Wait" opening a paragraph is one token.
    ids = tok("<think>\nx.\n\nWait, yes.\n</think>\n\nok", add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<think>") in ids and tok.convert_tokens_to_ids("</think>") in ids
    assert "</think>" in tok.decode(ids, skip_special_tokens=True)
    assert "Wait" in tok.convert_ids_to_tokens(ids)
    # Digits are split one per token.
    assert [t for t in tok.tokenize(" 1234") if t.strip("Ġ")] == ["1", "2", "3", "4"]


SGRPO_DIR = ASSET_DIR.parent / "tiny_reasoner_sgrpo"


@pytest.mark.skipif(not (SGRPO_DIR / "config.json").exists(), reason="S-GRPO checkpoint not committed")
def test_bundled_sgrpo_checkpoint_matches_testbed() -> None:
    """The committed S-GRPO checkpoint is a complete model of the testbed's shape and tokenizer."""
    weights = list(SGRPO_DIR.glob("*.safetensors"))
    assert weights and sum(w.stat().st_size for w in weights) < 30_000_000
    base, trained = (json.loads((d / "config.json").read_text()) for d in (ASSET_DIR, SGRPO_DIR))
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "tie_word_embeddings"):
        assert trained[key] == base[key], key
    assert (SGRPO_DIR / "tokenizer.json").read_bytes() == (ASSET_DIR / "tokenizer.json").read_bytes()
    assert json.loads((SGRPO_DIR / "training_info.json").read_text())["command"].startswith("reasonexit train sgrpo")
