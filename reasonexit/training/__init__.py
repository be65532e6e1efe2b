"""Training reasoning models to stop thinking early: S-GRPO (and a plain GRPO baseline) on TRL.

Heavy dependencies (torch, TRL) are imported only when a trainer is built, so the algorithm pieces
in :mod:`reasonexit.training.sgrpo` and the recipe parser stay cheap to import.
"""

from .config import TrainRecipe, load_recipe, recipe_from_dict
from .sgrpo import build_branch, choose_exit_positions, group_advantages, serial_group_rewards

__all__ = [
    "TrainRecipe",
    "build_branch",
    "choose_exit_positions",
    "group_advantages",
    "load_recipe",
    "recipe_from_dict",
    "serial_group_rewards",
]
