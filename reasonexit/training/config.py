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
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import UserError, first_line
from ..options import convert, describe, fields_of, opt

Method = Literal["sgrpo", "grpo"]
ExitSampling = Literal["random", "even"]
#: ``branches``: every truncated branch trains its copy of the shared thinking prefix (the paper's
#: objective, where each group member is a whole response). ``full``: the prefix is trained once, on the
#: full rollout; in the branches it is masked out and only the generated answer is trained.
SharedPrefix = Literal["branches", "full"]
Backend = Literal["auto", "transformers", "vllm", "vllm-cpu"]
VllmMode = Literal["colocate", "server"]
FinalDtype = Literal["float32", "bfloat16", "float16"]

METHODS: tuple[str, ...] = typing.get_args(Method)
EXIT_SAMPLING: tuple[str, ...] = typing.get_args(ExitSampling)
SHARED_PREFIX: tuple[str, ...] = typing.get_args(SharedPrefix)
BACKENDS: tuple[str, ...] = typing.get_args(Backend)
VLLM_MODES: tuple[str, ...] = typing.get_args(VllmMode)
FINAL_DTYPES: tuple[str, ...] = typing.get_args(FinalDtype)

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
    """Training problems, loaded like `reasonexit eval --dataset` (reasonexit.data.datasets.load_problems)."""

    name: str = opt(
        "synthetic",
        help="dataset name (gsm8k, math500, synthetic, ...) or a local .jsonl/.json/.parquet (a relative file: "
        "beside the recipe file if it is there, else in the working directory)",
    )
    split: str | None = opt("train", help="dataset split (synthetic: train is disjoint from the eval split)")
    limit: int | None = opt(None, help="first N problems only (null: all)")
    seed: int = opt(0, help="synthetic set: generator seed")
    problem_field: str | None = opt(None, help="column holding the problem text")
    answer_field: str | None = opt(None, help="column holding the gold answer")
    dataset_format: str | None = opt(None, help="named dataset whose column mapping a local file uses")


@dataclass
class GenerationSection:
    """Rollout generation: backend and sampling."""

    #: ``auto``: TRL's vLLM on GPU, ``vllm-cpu`` on CPU (measured 2.5-5x faster than ``generate`` for
    #: the testbed, ``scripts/bench_sgrpo_backends.py``); ``transformers``; ``vllm`` (TRL colocate/server, GPU);
    #: ``vllm-cpu`` (an in-process vLLM engine of the rollout, weights reloaded every step).
    backend: Backend = opt(
        "auto",
        help="rollout generator: auto (TRL's vLLM on GPU, vllm-cpu on CPU), transformers (the policy's generate), "
        "vllm (TRL's vLLM, GPU) or vllm-cpu (an in-process vLLM engine, weights reloaded every step)",
    )
    vllm_mode: VllmMode = opt("colocate", help="TRL's vLLM mode with backend vllm: colocate or server")
    vllm_max_model_len: int | None = opt(None, help="context length of the vllm-cpu engine (null: the model's own)")
    temperature: float = opt(1.0, help="sampling temperature of the rollouts (> 0)")
    top_p: float = opt(1.0, help="nucleus sampling of the rollouts, in (0, 1]")
    max_completion_tokens: int = opt(512, help="cap on the full rollout's completion tokens (thinking and answer)")


@dataclass
class SGRPOSection:
    """Serial-group settings."""

    num_exits: int = opt(8, help="early exits per rollout (m); the serial group is m exits + the full rollout")
    exit_sampling: ExitSampling = opt(
        "random", help="where the exits cut the thinking: random (uniform positions) or even (evenly spaced)"
    )
    shared_prefix: SharedPrefix = opt(
        "branches",
        help="branches: every exit trains its copy of the shared thinking prefix (the paper); "
        "full: the prefix is trained once, on the full rollout",
    )
    answer_inducer: str = opt(
        DEFAULT_INDUCER, help="text appended at an exit to make the model answer; must contain {think_end}"
    )
    answer_max_tokens: int = opt(64, help="tokens generated for the answer after an exit at most")


@dataclass
class GRPOSection:
    """Plain GRPO baseline settings (parallel group, outcome reward)."""

    num_generations: int = opt(8, help="completions per prompt (the parallel group, >= 2)")


@dataclass
class TrainRecipe:
    """A whole training recipe. Build it with :func:`load_recipe` or :func:`recipe_from_dict`."""

    method: Method = opt("sgrpo", help="sgrpo or grpo; `reasonexit train METHOD` fills it in and must agree")
    model: str = opt("", help="model to train: a local directory (relative to the recipe file) or a hub name")
    output_dir: str = opt("runs/sgrpo", help="checkpoints, metrics and <output_dir>/final go here")
    threads: int | None = opt(None, help="torch CPU threads (null: torch's default)")
    time_limit_minutes: float | None = opt(
        None, help="stop (and save) once training has run this long (null: no limit)"
    )
    final_dtype: FinalDtype = opt("bfloat16", help="dtype of the exported final model: float32, bfloat16 or float16")
    dataset: DatasetSection = opt(default_factory=DatasetSection, help="training problems (see dataset.*)")
    generation: GenerationSection = opt(default_factory=GenerationSection, help="rollouts (see generation.*)")
    sgrpo: SGRPOSection = opt(default_factory=SGRPOSection, help="serial-group settings (see sgrpo.*)")
    grpo: GRPOSection = opt(default_factory=GRPOSection, help="plain GRPO baseline settings (see grpo.*)")
    training: dict[str, Any] = opt(
        default_factory=dict, help="any trl.GRPOConfig field, passed through (checked against its type)"
    )
    #: Where the recipe came from (for error messages); not a recipe key.
    source: str = dataclasses.field(default="<recipe>", repr=False)

    @property
    def group_size(self) -> int:
        """Completions per prompt: the serial group (m exits + the full rollout) or the GRPO group."""
        return self.sgrpo.num_exits + 1 if self.method == "sgrpo" else self.grpo.num_generations


_SECTIONS: dict[str, type] = {
    "dataset": DatasetSection,
    "generation": GenerationSection,
    "sgrpo": SGRPOSection,
    "grpo": GRPOSection,
}
#: Fields of :class:`TrainRecipe` that are not recipe keys.
_NOT_KEYS = ("source",)


def _fill(cls: type, data: Any, where: str, source: str) -> Any:
    """``cls`` from a YAML mapping, every value converted by its field's declaration."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: '{where}' must be a mapping, got {type(data).__name__}")
    known = {f.name: tp for f, tp in fields_of(cls, skip=_NOT_KEYS)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in known:
            raise UserError(f"{source}: unknown key '{name}' (known: {', '.join(known)})")
        if cls is TrainRecipe and key in _SECTIONS:
            kwargs[key] = _fill(_SECTIONS[key], value, key, source)
        else:
            kwargs[key] = convert(value, known[key], f"{source}: '{name}'", typed=True)
    return cls(**kwargs)


def recipe_keys() -> list[str]:
    """Every recipe key with its type, default and help, one line each (``reasonexit train --help-recipe``)."""
    lines = describe(TrainRecipe, skip=(*_NOT_KEYS, *_SECTIONS, "training"), key_prefix="")
    for section, cls in _SECTIONS.items():
        lines.append(f"{section}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        lines += ["    " + line for line in describe(cls, key_prefix=f"{section}.")]
    training = next(f for f, _ in fields_of(TrainRecipe) if f.name == "training")
    lines.append(f"training: {training.metadata['help']}; see TRL's GRPOConfig documentation. Not here:")
    lines += [f"    training.{key}: set by {owner}" for key, owner in _OWNED_TRAINING_KEYS.items()]
    return lines


def _grpo_config_types() -> dict[str, Any]:
    """GRPOConfig field name -> its annotated type (resolved): TRL's declaration of ``training``."""
    from trl import GRPOConfig

    try:
        hints = typing.get_type_hints(GRPOConfig)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the raw ones
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(GRPOConfig)}


#: Values TRL accepts beyond a field's annotation (it converts them in ``__post_init__``).
_ALSO_ACCEPTED: dict[str, tuple[type, ...]] = {"scale_rewards": (bool,)}


def _check_types(recipe: TrainRecipe) -> None:
    """Every section value against its declaration (a recipe may also be built in Python)."""
    src = recipe.source
    for owner, where, cls in [(recipe, "", TrainRecipe), *((getattr(recipe, k), k, c) for k, c in _SECTIONS.items())]:
        for f, tp in fields_of(cls, skip=(*_NOT_KEYS, *_SECTIONS, "training")):
            name = f"{where}.{f.name}" if where else f.name
            setattr(owner, f.name, convert(getattr(owner, f.name), tp, f"{src}: '{name}'", typed=True))


def validate(recipe: TrainRecipe) -> TrainRecipe:
    """Check a recipe's values and batch geometry; raise a one-line :class:`UserError` if wrong."""
    src = recipe.source
    _check_types(recipe)
    if not recipe.model:
        raise UserError(f"{src}: 'model' is required (a local directory or a hub name)")
    if not recipe.output_dir:
        raise UserError(f"{src}: 'output_dir' is required")
    if recipe.threads is not None and recipe.threads < 1:
        raise UserError(f"{src}: 'threads' must be >= 1")
    if recipe.time_limit_minutes is not None and recipe.time_limit_minutes <= 0:
        raise UserError(f"{src}: 'time_limit_minutes' must be > 0")
    ds = recipe.dataset
    if ds.limit is not None and ds.limit < 1:
        raise UserError(f"{src}: 'dataset.limit' must be >= 1")
    gen = recipe.generation
    if gen.temperature <= 0:
        raise UserError(f"{src}: 'generation.temperature' must be > 0 (RL needs sampled rollouts)")
    if not 0 < gen.top_p <= 1:
        raise UserError(f"{src}: 'generation.top_p' must be in (0, 1]")
    if gen.max_completion_tokens < 2:
        raise UserError(f"{src}: 'generation.max_completion_tokens' must be >= 2")
    sg = recipe.sgrpo
    if sg.num_exits < 1:
        raise UserError(f"{src}: 'sgrpo.num_exits' must be >= 1")
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
        recipe.training[key] = convert(value, types_[key], f"{src}: 'training.{key}'", typed=True)
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
    relative to it, so a recipe works from any working directory. So is a relative dataset file
    (``dataset.name`` ending in .jsonl, .json or .parquet) that exists there; one that does not is
    left to the working directory, as the published recipes' ``data/...`` files are exported.
    """
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe must be a YAML mapping, got {type(data).__name__}")
    recipe = _fill(TrainRecipe, data, "", source)
    recipe.source = source
    if base_dir is not None and isinstance(recipe.model, str) and recipe.model:
        local = Path(base_dir) / Path(recipe.model).expanduser()
        if _is_relative_local_path(recipe.model) or local.exists():
            recipe.model = str(local.resolve())
    if base_dir is not None:
        recipe.dataset.name = _recipe_relative_dataset(recipe.dataset.name, Path(base_dir))
    return validate(recipe)


def _recipe_relative_dataset(name: str, base_dir: Path) -> str:
    """A relative dataset file found beside the recipe, as a path from anywhere; else ``name``."""
    from ..data.datasets import LOCAL_SUFFIXES

    path = Path(name).expanduser()
    if path.is_absolute() or path.suffix.lower() not in LOCAL_SUFFIXES:
        return name
    beside = base_dir / path
    if beside.is_file():
        return str(beside.resolve())
    return name


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
        first = first_line(exc)
        raise UserError(f"{p}: not valid YAML: {first}") from None
    if data is None:
        raise UserError(f"{p}: the recipe is empty")
    if isinstance(data, dict) and method is not None:
        given = data.get("method")
        if given is not None and given != method:
            raise UserError(f"{p}: recipe is for method {given!r}, but 'reasonexit train {method}' was run")
        data = {**data, "method": method}
    return recipe_from_dict(data, str(p), base_dir=p.resolve().parent)
