"""``reasonexit train sgrpo|grpo --config rl/<recipe>.yaml``: run a training recipe.

``reasonexit.cli`` hands everything after ``train`` to :func:`main`. User errors (a missing or
malformed recipe, a bad model, an impossible batch geometry) print one line and return 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import UserError

EXIT_USER_ERROR = 2


class _RecipeKeys(argparse.Action):
    """``--help-recipe``: print every recipe key with type, default and help, then exit (like ``--help``)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from .config import recipe_keys

        print("Recipe keys (YAML; a section's keys nest under it, e.g. `sgrpo: {num_exits: 8}`):")
        print("\n".join("  " + line for line in recipe_keys()))
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``reasonexit train``."""
    p = argparse.ArgumentParser(
        prog="reasonexit train",
        description=(
            "Train a reasoning model to stop thinking early. `sgrpo`: serial-group decaying-reward RL (S-GRPO); "
            "`grpo`: plain GRPO baseline (parallel group, outcome reward). Multi-GPU: "
            "`accelerate launch -m reasonexit.training.cli sgrpo --config ...`."
        ),
    )
    p.add_argument("method", choices=["sgrpo", "grpo"], help="training method")
    p.add_argument("--config", required=True, help="YAML recipe (see rl/README.md and --help-recipe)")
    p.add_argument("--help-recipe", action=_RecipeKeys, help="list every recipe key with type, default and help")
    p.add_argument("--output-dir", default=None, help="override the recipe's output_dir")
    p.add_argument("--resume", action="store_true", help="resume from the last checkpoint in the output dir")
    p.add_argument("--max-steps", type=int, default=None, help="override training.max_steps")
    p.add_argument("--model", default=None, help="override the recipe's model")
    p.add_argument("--quiet", action="store_true", help="no per-step lines on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``reasonexit train``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        from .config import load_recipe, validate

        recipe = load_recipe(args.config, method=args.method)
        if args.model:
            recipe.model = args.model
            validate(recipe)
        if args.max_steps is not None and args.max_steps < 1:
            raise UserError("--max-steps must be >= 1")
        from .trainer import run_training

        summary = run_training(
            recipe, output_dir=args.output_dir, resume=args.resume, max_steps=args.max_steps, quiet=args.quiet
        )
    except UserError as exc:
        print(f"reasonexit: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("reasonexit: interrupted; re-run with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
