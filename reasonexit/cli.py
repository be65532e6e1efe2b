"""The ``reasonexit`` command line: ``eval``, ``report``.

User errors (bad model, dataset, rows, options, configs) print one line and exit with status 2;
no traceback is shown for them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from .errors import Interrupted, RunStopped, UserError

EXIT_USER_ERROR = 2


def _eval_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval",
        # no abbreviations: method options (--n, --k, ...) must not be read as engine options
        allow_abbrev=False,
        help="evaluate a method on a dataset",
        description=(
            "Evaluate a method on a dataset. Method options follow as --name value "
            "(e.g. --method budget --max-thinking-tokens 256). Defaults: the bundled tiny reasoning "
            "model and the synthetic set, offline on CPU."
        ),
    )
    p.add_argument("--model", default=None, help="local model directory or hub name (default: bundled tiny model)")
    p.add_argument("--tokenizer", default=None, help="tokenizer, if not the model's")
    p.add_argument("--dataset", default="synthetic", help="dataset name or a local .jsonl/.json/.parquet file")
    p.add_argument("--dataset-format", default=None, help="named dataset whose column mapping a local file uses")
    p.add_argument("--split", default=None, help="dataset split (hub datasets)")
    p.add_argument("--problem-field", default=None)
    p.add_argument("--answer-field", default=None)
    p.add_argument("--id-field", default=None)
    p.add_argument("--difficulty", type=int, default=None, help="synthetic set: only this difficulty")
    p.add_argument("--data-seed", type=int, default=0, help="synthetic set: generator seed")
    p.add_argument("--method", default="vanilla", help="method name (see `reasonexit methods`)")
    p.add_argument("--limit", type=int, default=None, help="first N problems only")
    p.add_argument("--out", default=None, help="result file (jsonl); re-running with the same file resumes")
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=2048, help="cap on generated tokens per problem")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-in-flight", type=int, default=256, help="problems in flight at once")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--kv-cache-gib", type=float, default=None, help="KV-cache size in GiB")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--data-parallel-size", type=int, default=1)
    p.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--max-num-seqs", type=int, default=1024, help="sequences the engine decodes at once")
    p.add_argument("--block-size", type=int, default=None, help="KV block size (default: vLLM's on GPU, 32 on CPU)")
    p.add_argument("--think-start", default=None, help="override the thinking start marker")
    p.add_argument("--think-end", default=None, help="override the thinking end marker")
    p.add_argument("--no-thinking", action="store_true", help="treat the model as a non-reasoning model")
    p.add_argument("--plot", default=None, help="also write an accuracy-vs-tokens PNG here")
    p.add_argument("--quiet", action="store_true", help="no progress bar or engine logs")
    p.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop the run at the first problem that fails (default: record an error row and go on)",
    )
    return p


def _report_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="compare run files: markdown table and accuracy-vs-tokens plot")
    p.add_argument("runs", nargs="+", help="run files (jsonl) written by `reasonexit eval`")
    p.add_argument("--plot", default="report.png", help="PNG path for the plot ('' for none)")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``reasonexit`` command."""
    parser = argparse.ArgumentParser(
        prog="reasonexit", description="Stop reasoning models from overthinking.", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _eval_parser(sub)
    _report_parser(sub)
    sub.add_parser("methods", help="list methods and their options")
    sub.add_parser("train", help="training jobs: `reasonexit train sgrpo --config rl/<recipe>.yaml`", add_help=False)
    return parser


def _method_options(extra: list[str]) -> dict[str, str]:
    """``--name value`` / ``--name=value`` / bare ``--flag`` pairs left over by argparse."""
    opts: dict[str, str] = {}
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--"):
            raise UserError(f"unexpected argument {tok!r}")
        if "=" in tok:
            key, value = tok[2:].split("=", 1)
            i += 1
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            key, value = tok[2:], extra[i + 1]
            i += 2
        else:
            key, value = tok[2:], "true"
            i += 1
        opts[key] = value
    return opts


def _route_logs(quiet: bool) -> None:
    """Engine logs go to stderr (stdout carries the result table); ``--quiet`` keeps errors only.

    Must run before vLLM is imported: vLLM configures its logger from the environment at import.
    """
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    if quiet:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        logging.getLogger("vllm").setLevel(logging.ERROR)
        logging.getLogger("reasonexit").setLevel(logging.ERROR)


def _on_signal(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM: raise :class:`Interrupted` in the main thread, which shuts the run down in
    order (stop taking work, abort in-flight requests, flush rows, close the engine). Later
    signals are ignored while that runs; it is bounded by timeouts."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)


def _check_engine_options(args: argparse.Namespace, model: str) -> None:
    """Engine settings checked before anything starts (the engine would find them 40-60 s later)."""
    import typing

    from vllm.config.model import ModelDType

    dtypes = [d for d in typing.get_args(ModelDType) if isinstance(d, str)]
    if args.dtype not in dtypes:
        raise UserError(f"--dtype {args.dtype!r} is not a dtype vLLM knows; choose from: {', '.join(dtypes)}")
    for name, value, low in (
        ("--max-in-flight", args.max_in_flight, 1),
        ("--max-num-seqs", args.max_num_seqs, 1),
        ("--tensor-parallel-size", args.tensor_parallel_size, 1),
        ("--data-parallel-size", args.data_parallel_size, 1),
        ("--block-size", args.block_size, 1),
        ("--max-model-len", args.max_model_len, 1),
    ):
        if value is not None and value < low:
            raise UserError(f"{name} must be >= {low}, got {value}")
    if args.kv_cache_gib is not None and not args.kv_cache_gib > 0:
        raise UserError(f"--kv-cache-gib must be > 0, got {args.kv_cache_gib}")
    if args.max_model_len is not None and not os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN"):
        from .engine import EngineConfig, _config_context_length

        limit = _config_context_length(EngineConfig(model=model))
        if args.max_model_len > limit:
            raise UserError(
                f"--max-model-len {args.max_model_len} is longer than the model's context of {limit} tokens "
                "(its config.json)"
            )


def cmd_eval(args: argparse.Namespace, extra: list[str]) -> int:
    """``reasonexit eval``: check everything checkable, then run, write rows as they finish, print a summary.

    Nothing is started and no file is created until every check has passed; the result file
    appears with its first row.
    """
    from .api import check_decoding, default_run_path, evaluate, run_signature
    from .datasets import load_problems
    from .engine import DEFAULT_MODEL, EngineConfig, get_session
    from .methods.base import Decoding, make_method
    from .report import markdown_table, plot_accuracy_vs_tokens, summarize
    from .runner import check_run_file

    method = make_method(args.method, _method_options(extra))
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be >= 1")
    if args.max_tokens < 1:
        raise UserError("--max-tokens must be >= 1")
    decoding = Decoding(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed)
    check_decoding(decoding)
    model = args.model or DEFAULT_MODEL
    signature = run_signature(model, args.dataset, method, decoding)
    out = Path(args.out) if args.out else default_run_path(signature)
    check_run_file(out)
    config = EngineConfig(
        model=model,
        tokenizer=args.tokenizer,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        kv_cache_gib=args.kv_cache_gib if args.kv_cache_gib is not None else _default_kv(),
        tensor_parallel_size=args.tensor_parallel_size,
        data_parallel_size=args.data_parallel_size,
        enforce_eager=args.enforce_eager,
        block_size=args.block_size,
        max_num_seqs=args.max_num_seqs,
        seed=args.seed,
        think_start=args.think_start,
        think_end=args.think_end,
        no_thinking=args.no_thinking,
    )
    problems = load_problems(
        args.dataset,
        limit=args.limit,
        split=args.split,
        problem_field=args.problem_field,
        answer_field=args.answer_field,
        id_field=args.id_field,
        dataset_format=args.dataset_format,
        synthetic_seed=args.data_seed,
        synthetic_difficulty=args.difficulty,
    )
    _check_engine_options(args, model)
    if args.no_thinking:
        method.check_model(has_thinking=False)
    session = get_session(config)  # the tokenizer; the engine starts with the first request
    method.check_model(session.markers.has_thinking)
    print(
        f"model: {model} ({session.markers.describe()}); {len(problems)} problems; method {method.name}",
        file=sys.stderr,
    )
    try:
        run = evaluate(
            problems,
            method,
            session,
            decoding,
            out,
            signature=signature,
            max_in_flight=args.max_in_flight,
            progress=not args.quiet,
            fail_fast=args.fail_fast,
        )
    except RunStopped as stop:
        if stop.signum is not None or stop.engine_dead:
            session.close()  # in order: requests were aborted and rows flushed; now the engine
        if stop.signum is not None:
            print(f"interrupted: {stop.done} of {stop.total} done; re-run the same command to resume", file=sys.stderr)
            return 128 + stop.signum
        print(
            f"reasonexit: error: {stop.reason}; {stop.done} of {stop.total} done; "
            "re-run the same command to resume",
            file=sys.stderr,
        )
        return 1
    summary = summarize(run.rows, run=out.stem, wall_s=run.wall_s, timed_rows=run.new_rows)
    print(markdown_table([summary]))
    print(f"results: {out}")
    if args.plot:
        print(f"plot: {plot_accuracy_vs_tokens([summary], args.plot)}")
    return 0


def _default_kv() -> float | None:
    """A small KV cache on CPU machines unless the user set one."""
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return None
    from .engine import _cuda_available

    return None if _cuda_available() else 2.0


def cmd_report(args: argparse.Namespace) -> int:
    """``reasonexit report``: side-by-side table of run files and a plot."""
    from .report import report

    table, png = report(args.runs, args.plot or None)
    print(table)
    if png:
        print(f"plot: {png}")
    return 0


def cmd_methods() -> int:
    """``reasonexit methods``: list methods with their options and defaults."""
    import dataclasses

    from .methods.base import method_class, method_names

    for name in method_names():
        cls = method_class(name)
        opts = [
            f"--{f.name.replace('_', '-')} (default {f.default!r})"
            for f in dataclasses.fields(cls.Params)
            if f.default is not dataclasses.MISSING
        ]
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name}: {doc}")
        for o in opts:
            print(f"    {o}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``reasonexit`` console script.

    Called without ``argv`` (as the ``reasonexit`` command), it also shuts the engine down before
    returning, with SIGINT/SIGTERM ignored, so a late signal cannot cut the shutdown short and
    leave engine processes or shared memory behind.
    """
    as_command = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        # Training has its own parser (and heavy imports): hand the rest of the line over.
        from .training.cli import main as train_main

        return train_main(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    _route_logs(bool(getattr(args, "quiet", False)))
    try:
        if args.command == "eval":
            # installed before vLLM is imported (seconds): a signal at any point gets one line
            return _with_signal_handlers(cmd_eval, args, extra)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command == "report":
            return cmd_report(args)
        if args.command == "methods":
            return cmd_methods()
    except UserError as exc:
        print(f"reasonexit: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Interrupted as exc:  # before the run started: nothing was written
        print("interrupted before the run started; nothing was written", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        if as_command and "reasonexit.engine" in sys.modules:
            from .engine import close_all_sessions

            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_IGN)
            close_all_sessions()
    parser.error(f"unknown command {args.command}")
    return EXIT_USER_ERROR


def _with_signal_handlers(fn, *args):  # noqa: ANN001, ANN202 - a thin wrapper
    """Run ``fn`` with SIGINT/SIGTERM turned into :class:`Interrupted` (main thread only), then
    restore the previous handlers (the CLI is also called in-process, e.g. by tests)."""
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return fn(*args)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


if __name__ == "__main__":
    sys.exit(main())
