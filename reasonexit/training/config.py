"""YAML training recipes (``rl/*.yaml``) as validated dataclasses.

A recipe has a few sections::

    method: sgrpo                 # or grpo (plain GRPO baseline); the CLI subcommand must agree
    model: reasonexit/assets/tiny_reasoner
    output_dir: runs/tiny_sgrpo
    threads: 2                    # torch CPU threads (null: leave torch's default)
    time_limit_minutes: 40        # stop (and save) once training has run this long (null: no limit)
    final_dtype: bfloat16         # dtype of the exported final model (float32, bfloat16, float16)
    dataset: {name: synthetic, split: train, limit: 4000, seed: 0}
    generation: {backend: auto, temperature: 1.0, top_p: 1.0, max_completion_tokens: 512}
    sgrpo: {num_exits: 8, exit_sampling: random, shared_prefix: branches, answer_max_tokens: 64, ...}
    grpo: {num_generations: 8}
    training: {learning_rate: 1.0e-6, per_device_train_batch_size: 9, ...}   # any GRPOConfig field

Every malformed recipe (unknown key, wrong type, impossible batch geometry) raises
:class:`reasonexit.errors.UserError` with a one-line message naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

METHODS: tuple[str, ...] = ("sgrpo", "grpo")
EXIT_SAMPLING: tuple[str, ...] = ("random", "even")
#: ``branches``: every truncated branch trains its copy of the shared thinking prefix (the paper's
#: objective, where each group member is a whole response). ``full``: the prefix is trained once, on the
#: full rollout; in the branches it is masked out and only the generated answer is trained.
SHARED_PREFIX: tuple[str, ...] = ("branches", "full")
BACKENDS: tuple[str, ...] = ("auto", "transformers", "vllm", "vllm-cpu")
VLLM_MODES: tuple[str, ...] = ("colocate", "server")
FINAL_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")

#: The paper's answer inducer; ``{think_end}`` is replaced by the model's end-of-thinking marker.
DEFAULT_INDUCER = "\n\nTime is limited, stop thinking and start answering.\n{think_end}\n\n"

# GRPOConfig fields a recipe may not set in ``training`` because another section owns them.
_OWNED_TRAINING_KEYS = {
    "output_dir": "top-level output_dir",
    "num_generations": "sgrpo.num_exits (S-GRPO) or grpo.num_generations",
    "temperature": "generation.temperature",
    "top_p": "generation.top_p",
    "max_completion_length": "generation.max_completion_tokens",
    "use_vllm": "generation.backend",
    "vllm_mode": "generation.vllm_mode",
}


@dataclass
class DatasetSection:
    """Training problems, loaded with :func:`reasonexit.datasets.load_problems`."""

    name: str = "synthetic"
    split: str | None = "train"
    limit: int | None = None
    seed: int = 0
    problem_field: str | None = None
    answer_field: str | None = None
    dataset_format: str | None = None


@dataclass
class GenerationSection:
    """Rollout generation: backend and sampling."""

    #: ``auto``: TRL's vLLM on GPU, ``vllm-cpu`` on CPU (measured 2.5-5x faster than ``generate`` for
    #: the testbed, ``scripts/bench_sgrpo_backends.py``); ``transformers``; ``vllm`` (TRL colocate/server, GPU);
    #: ``vllm-cpu`` (an in-process vLLM engine of the rollout, weights reloaded every step).
    backend: str = "auto"
    vllm_mode: str = "colocate"
    #: Context length of the ``vllm-cpu`` engine (default: the model's own).
    vllm_max_model_len: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    #: Cap on the full rollout's completion tokens (thinking and answer).
    max_completion_tokens: int = 512


@dataclass
class SGRPOSection:
    """Serial-group settings."""

    num_exits: int = 8
    exit_sampling: str = "random"
    shared_prefix: str = "branches"
    answer_inducer: str = DEFAULT_INDUCER
    answer_max_tokens: int = 64


@dataclass
class GRPOSection:
    """Plain GRPO baseline settings (parallel group, outcome reward)."""

    num_generations: int = 8


@dataclass
class TrainRecipe:
    """A whole training recipe. Build it with :func:`load_recipe` or :func:`recipe_from_dict`."""

    method: str = "sgrpo"
    model: str = ""
    output_dir: str = "runs/sgrpo"
    threads: int | None = None
    time_limit_minutes: float | None = None
    final_dtype: str = "bfloat16"
    dataset: DatasetSection = field(default_factory=DatasetSection)
    generation: GenerationSection = field(default_factory=GenerationSection)
    sgrpo: SGRPOSection = field(default_factory=SGRPOSection)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    training: dict[str, Any] = field(default_factory=dict)
    #: Where the recipe came from (for error messages); not a recipe key.
    source: str = field(default="<recipe>", repr=False)

    @property
    def group_size(self) -> int:
        """Completions per prompt: the serial group (m exits + the full rollout) or the GRPO group."""
        return self.sgrpo.num_exits + 1 if self.method == "sgrpo" else self.grpo.num_generations


_SECTIONS = {
    "dataset": DatasetSection,
    "generation": GenerationSection,
    "sgrpo": SGRPOSection,
    "grpo": GRPOSection,
}


def _type_ok(value: Any, annotation: str) -> bool:
    """Check a YAML value against a field annotation written as a string (``from __future__``)."""
    optional = "None" in annotation
    if value is None:
        return optional
    base = annotation.replace("| None", "").strip()
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if base == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if base == "str":
        return isinstance(value, str)
    if base == "bool":
        return isinstance(value, bool)
    if base.startswith("dict"):
        return isinstance(value, dict)
    return True


def _fill(cls: type, data: Any, where: str, source: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: '{where}' must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in known:
            raise UserError(f"{source}: unknown key '{name}' (known: {', '.join(known)})")
        f = known[key]
        if key in _SECTIONS and cls is TrainRecipe:
            kwargs[key] = _fill(_SECTIONS[key], value, key, source)
            continue
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if not _type_ok(value, annotation):
            raise UserError(f"{source}: '{name}' must be {annotation}, got {value!r}")
        if annotation.startswith("float") and isinstance(value, int):
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def _check_choice(value: str, choices: tuple[str, ...], name: str, source: str) -> None:
    if value not in choices:
        raise UserError(f"{source}: '{name}' must be one of {', '.join(choices)}, got {value!r}")


def _grpo_config_fields() -> set[str]:
    return set(_grpo_config_types())


def _grpo_config_types() -> dict[str, Any]:
    """GRPOConfig field name -> its annotated type (resolved)."""
    import typing

    from trl import GRPOConfig

    try:
        hints = typing.get_type_hints(GRPOConfig)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the raw ones
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(GRPOConfig)}


#: Values TRL accepts beyond a field's annotation (it converts them in ``__post_init__``).
_ALSO_ACCEPTED: dict[str, tuple[type, ...]] = {"scale_rewards": (bool,)}


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """``(ok, value)``: whether a YAML value fits an annotated type, and the value to use.

    A float field also takes a numeric string (PyYAML reads ``1e-6`` as a string) and an int.
    Types it cannot judge (``Any``, classes other than the basic ones) accept the value.
    """
    import enum
    import types
    import typing

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _coerce(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None) or tp is None:
        return value is None, value
    if tp is typing.Any:
        return True, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if origin in (list, tuple) or tp in (list, tuple):
        return isinstance(value, list | tuple), value
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int | float):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return value in {m.value for m in tp} or value in tp.__members__, value
    return True, value


def _type_name(tp: Any) -> str:
    name = getattr(tp, "__name__", None)
    return name if name and not getattr(tp, "__args__", None) else str(tp).replace("typing.", "")


def validate(recipe: TrainRecipe) -> TrainRecipe:
    """Check a recipe's values and batch geometry; raise a one-line :class:`UserError` if wrong."""
    src = recipe.source
    _check_choice(recipe.method, METHODS, "method", src)
    if not recipe.model:
        raise UserError(f"{src}: 'model' is required (a local directory or a hub name)")
    if not recipe.output_dir:
        raise UserError(f"{src}: 'output_dir' is required")
    _check_choice(recipe.final_dtype, FINAL_DTYPES, "final_dtype", src)
    if recipe.threads is not None and recipe.threads < 1:
        raise UserError(f"{src}: 'threads' must be >= 1")
    if recipe.time_limit_minutes is not None and recipe.time_limit_minutes <= 0:
        raise UserError(f"{src}: 'time_limit_minutes' must be > 0")
    ds = recipe.dataset
    if ds.limit is not None and ds.limit < 1:
        raise UserError(f"{src}: 'dataset.limit' must be >= 1")
    gen = recipe.generation
    _check_choice(gen.backend, BACKENDS, "generation.backend", src)
    _check_choice(gen.vllm_mode, VLLM_MODES, "generation.vllm_mode", src)
    if gen.temperature <= 0:
        raise UserError(f"{src}: 'generation.temperature' must be > 0 (RL needs sampled rollouts)")
    if not 0 < gen.top_p <= 1:
        raise UserError(f"{src}: 'generation.top_p' must be in (0, 1]")
    if gen.max_completion_tokens < 2:
        raise UserError(f"{src}: 'generation.max_completion_tokens' must be >= 2")
    sg = recipe.sgrpo
    if sg.num_exits < 1:
        raise UserError(f"{src}: 'sgrpo.num_exits' must be >= 1")
    _check_choice(sg.exit_sampling, EXIT_SAMPLING, "sgrpo.exit_sampling", src)
    _check_choice(sg.shared_prefix, SHARED_PREFIX, "sgrpo.shared_prefix", src)
    if sg.answer_max_tokens < 1:
        raise UserError(f"{src}: 'sgrpo.answer_max_tokens' must be >= 1")
    if "{think_end}" not in sg.answer_inducer:
        raise UserError(f"{src}: 'sgrpo.answer_inducer' must contain {{think_end}} (the end-of-thinking marker)")
    try:
        sg.answer_inducer.format(think_end="")
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"{src}: 'sgrpo.answer_inducer' has a bad placeholder: {exc}") from None
    if recipe.grpo.num_generations < 2:
        raise UserError(f"{src}: 'grpo.num_generations' must be >= 2")

    types_ = _grpo_config_types()
    for key, value in list(recipe.training.items()):
        if key in _OWNED_TRAINING_KEYS:
            raise UserError(f"{src}: 'training.{key}' is set by {_OWNED_TRAINING_KEYS[key]}, not in training")
        if key not in types_:
            raise UserError(f"{src}: unknown key 'training.{key}' (not a trl.GRPOConfig field)")
        if isinstance(value, _ALSO_ACCEPTED.get(key, ())):
            continue
        ok, converted = _coerce(value, types_[key])
        if not ok:
            raise UserError(f"{src}: 'training.{key}' must be {_type_name(types_[key])}, got {value!r}")
        recipe.training[key] = converted
    t = recipe.training
    if recipe.method == "sgrpo":
        scale = t.get("scale_rewards", "none")
        if scale not in ("none", False):
            raise UserError(
                f"{src}: S-GRPO uses advantage = reward - group mean; "
                f"'training.scale_rewards' must be none, got {scale!r}"
            )
    per_device = t.get("per_device_train_batch_size", 8)
    accum = t.get("gradient_accumulation_steps", 1)
    steps_per_gen = t.get("steps_per_generation") or accum
    for name, value in (("per_device_train_batch_size", per_device), ("gradient_accumulation_steps", accum)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{src}: 'training.{name}' must be a positive integer, got {value!r}")
    if "generation_batch_size" in t:
        raise UserError(f"{src}: set 'training.steps_per_generation', not generation_batch_size")
    local_batch = per_device * steps_per_gen
    if local_batch % recipe.group_size != 0:
        what = (
            f"the serial group (sgrpo.num_exits + 1 = {recipe.group_size})"
            if recipe.method == "sgrpo"
            else f"grpo.num_generations ({recipe.group_size})"
        )
        raise UserError(
            f"{src}: per_device_train_batch_size x steps_per_generation ({per_device} x {steps_per_gen} = "
            f"{local_batch}) must be a multiple of {what}, so that every group stays on one process"
        )
    return recipe


def recipe_from_dict(
    data: Any, source: str = "<recipe>", base_dir: str | os.PathLike[str] | None = None
) -> TrainRecipe:
    """Build and validate a recipe from a parsed YAML mapping.

    With ``base_dir`` (the recipe file's directory), a relative local ``model`` path is taken
    relative to it, so a recipe works from any working directory.
    """
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe must be a YAML mapping, got {type(data).__name__}")
    recipe = _fill(TrainRecipe, data, "", source)
    recipe.source = source
    if base_dir is not None and isinstance(recipe.model, str) and recipe.model:
        local = Path(base_dir) / Path(recipe.model).expanduser()
        if _is_relative_local_path(recipe.model) or local.exists():
            recipe.model = str(local.resolve())
    return validate(recipe)


def _is_relative_local_path(name: str) -> bool:
    """A relative path of a local model: not absolute, not ``~``, and not a hub name (``org/model``)."""
    if not name or name.startswith(("/", "~")):
        return False
    return name.startswith(".") or name.count("/") != 1


def load_recipe(path: str | os.PathLike[str], method: str | None = None) -> TrainRecipe:
    """Read, parse and validate a YAML recipe file.

    ``method`` (the CLI subcommand) fills in a recipe that names none, and must agree with one
    that does.
    """
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"config file not found: {str(path)!r}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{p}: not valid YAML: {first}") from None
    if data is None:
        raise UserError(f"{p}: the recipe is empty")
    if isinstance(data, dict) and method is not None:
        given = data.get("method")
        if given is not None and given != method:
            raise UserError(f"{p}: recipe is for method {given!r}, but 'reasonexit train {method}' was run")
        data = {**data, "method": method}
    return recipe_from_dict(data, str(p), base_dir=p.resolve().parent)
