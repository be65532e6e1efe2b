"""The ``reasonexit`` command line: ``eval``, ``report``.

User errors (bad model, dataset, rows, options, configs) print one line and exit with status 2;
no traceback is shown for them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import Interrupted, RunStopped, UserError

if TYPE_CHECKING:
    from .engine import EngineConfig
    from .methods.base import Decoding

EXIT_USER_ERROR = 2


def _eval_parser(sub: argparse._SubParsersAction, method_help: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The ``eval`` parser, generated from the option declarations (:mod:`reasonexit.options`).

    ``method_help`` names methods whose options are listed in ``--help`` (the method given with
    ``--method`` and any ``--inner`` one); method options themselves are parsed by the method.
    """
    from .options import add_arguments
    from .runs.options import EvalOptions

    p = sub.add_parser(
        "eval",
        # no abbreviations: method options (--n, --k, ...) must not be read as other options
        allow_abbrev=False,
        help="evaluate a method on a dataset",
        description=(
            "Evaluate a method on a dataset. Method options follow as --name value "
            "(e.g. --method budget --max-thinking-tokens 256); `reasonexit eval --method NAME --help` "
            "lists them. Defaults: the bundled tiny reasoning model and the synthetic set, offline on CPU."
        ),
    )
    add_arguments(p.add_argument_group("run"), EvalOptions)
    _add_decoding_and_engine(p)
    _add_method_groups(p, method_help)
    return p


def _add_method_groups(p: argparse.ArgumentParser, method_help: tuple[str, ...]) -> None:
    """One argument group per named method with its options (``--method NAME --help``)."""
    from .methods.base import method_class
    from .options import add_arguments

    for name in method_help:
        cls = method_class(name)
        group = p.add_argument_group(f"method {name} ({(cls.__doc__ or '').strip().splitlines()[0]})")
        add_arguments(group, cls.Params, dest_prefix=f"method.{name}.")


def _serve_parser(sub: argparse._SubParsersAction, method_help: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The ``serve`` parser: server flags, then the decoding and engine flags of ``eval``."""
    from .options import add_arguments
    from .serve import ServeOptions

    p = sub.add_parser(
        "serve",
        allow_abbrev=False,
        help="serve an OpenAI-compatible API whose methods exit early",
        description=(
            "Serve /v1/chat/completions, /v1/completions, /v1/models, /health and /metrics. The default "
            "method's options follow as --name value (e.g. --method deer --threshold 0.9); requests may "
            'choose another with "reasonexit": {"method": ..., options...} in the body.'
        ),
    )
    add_arguments(p.add_argument_group("server"), ServeOptions)
    _add_decoding_and_engine(p, "decoding defaults")
    p.add_argument("--quiet", nargs="?", const="true", default="false", help=argparse.SUPPRESS)
    _add_method_groups(p, method_help)
    return p


def _add_decoding_and_engine(p: argparse.ArgumentParser, decoding_title: str = "decoding") -> None:
    """The decoding and engine flag groups of every command that runs a model (the engine's seed is
    the decoding seed, ``--seed``)."""
    from .engine import EngineConfig
    from .methods.base import Decoding
    from .options import add_arguments

    add_arguments(p.add_argument_group(decoding_title), Decoding)
    add_arguments(p.add_argument_group("engine"), EngineConfig, skip=("seed",), dest_prefix="engine.")


def _sweep_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``sweep`` parser: the sweep's settings and problems, then the decoding and engine flags."""
    from .options import add_arguments
    from .runs.sweep import SweepOptions

    p = sub.add_parser(
        "sweep",
        allow_abbrev=False,
        help="run many methods and settings on one engine; table and accuracy-vs-cost plots",
        description=(
            "Run every setting of the --grid and --baseline flags on one engine, each into its own run file "
            "in --out (re-running resumes), then print the table (accuracy ± s.e., tokens, wall time, engine "
            "steps, tokens saved, Pareto front) and write sweep.md and sweep.png there."
        ),
    )
    add_arguments(p.add_argument_group("sweep"), SweepOptions)
    _add_decoding_and_engine(p)
    return p


def _calibrate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``calibrate`` parser: what is tested and with which guarantee, then decoding and engine flags."""
    from .options import add_arguments
    from .runs.calibrate import CalibrateOptions

    p = sub.add_parser(
        "calibrate",
        allow_abbrev=False,
        help="choose a method's parameter with a stated bound on the accuracy loss (Learn then Test)",
        description=(
            "Run a reference and every --grid value of --param on calibration problems; choose the most "
            "aggressive value whose loss (reference right, setting wrong) stays within --max-loss with "
            "probability >= 1 - --delta (fixed-sequence testing); write a settings file for --settings. "
            "The method's other options follow as --name value."
        ),
    )
    add_arguments(p.add_argument_group("calibration"), CalibrateOptions)
    _add_decoding_and_engine(p)
    return p


def _report_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="compare run files: markdown table and accuracy-vs-tokens plot")
    p.add_argument("runs", nargs="+", help="run files (jsonl) written by `reasonexit eval`, or a sweep directory")
    p.add_argument("--plot", default="report.png", help="PNG path for the plot ('' for none)")
    return p


def build_parser(method_help: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The argument parser of the ``reasonexit`` command (``method_help``: methods whose options
    ``eval --help`` lists)."""
    parser = argparse.ArgumentParser(
        prog="reasonexit", description="Stop reasoning models from overthinking.", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _eval_parser(sub, method_help)
    _sweep_parser(sub)
    _calibrate_parser(sub)
    _report_parser(sub)
    _serve_parser(sub, method_help)
    methods = sub.add_parser("methods", help="list methods, or one method's options with their help")
    methods.add_argument("name", nargs="?", help="a method name")
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


def _on_signal(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM: raise :class:`Interrupted` in the main thread, which shuts the run down in
    order (stop taking work, abort in-flight requests, flush rows, close the engine). Later
    signals are ignored while that runs; it is bounded by timeouts."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)


def _eval_settings(args: argparse.Namespace, options_class: type | None = None) -> tuple[Any, Decoding, EngineConfig]:
    """The run, decoding and engine settings from the parsed flags (converted by their declarations).

    ``options_class``: the run's options (default :class:`EvalOptions`; ``sweep``: its own). A
    ``--preset`` fills in the decoding settings of its model family; flags given explicitly win.
    """
    from .engine import EngineConfig
    from .methods.base import Decoding
    from .options import OptionError, collect
    from .runs.options import PRESETS, EvalOptions

    values = vars(args)
    cls = options_class or EvalOptions
    try:  # the settings check themselves; a bad one is named by its flag
        run = cls(**collect(cls, values))
        given = collect(Decoding, values)
        decoding = Decoding(**{**PRESETS.get(run.preset or "", {}), **given})
    except OptionError as exc:
        raise UserError(exc.flag_message) from None
    engine_kw = collect(EngineConfig, values, skip=("seed",), dest_prefix="engine.")
    engine = EngineConfig(**engine_kw, seed=decoding.seed)
    return run, decoding, engine


def cmd_eval(args: argparse.Namespace, extra: list[str]) -> int:
    """``reasonexit eval``: check everything checkable, then run, write rows as they finish, print a summary.

    Nothing is started and no file is created until every check has passed; the result file
    appears with its first row.
    """
    from .engine import get_session
    from .methods.base import make_method
    from .runs.calibrate import with_settings
    from .runs.evaluate import evaluate
    from .runs.report import markdown_table, plot_accuracy_vs_tokens, summarize
    from .runs.runfile import default_run_path, open_run, run_signature

    run, decoding, config = _eval_settings(args)
    method = make_method(*with_settings(run.settings, run.method, _method_options(extra)))
    signature = run_signature(config.model, run.dataset, method, decoding, samples=run.samples)
    out = Path(run.out) if run.out else default_run_path(signature)
    run_file = open_run(out, signature)  # checked before anything starts; evaluate does not check it again
    problems = run.load()
    if config.no_thinking:
        method.check_model(has_thinking=False)
    session = get_session(config)  # the tokenizer; the engine starts with the first request
    method.check_model(session.markers.has_thinking)
    samples = f" x {run.samples} samples" if run.samples > 1 else ""
    print(
        f"model: {config.model} ({session.markers.describe()}); {len(problems)} problems{samples}; "
        f"method {method.name}" + (f"; preset {run.preset}" if run.preset else ""),
        file=sys.stderr,
    )
    if session.dtype_note:
        print(session.dtype_note, file=sys.stderr)
    try:
        result = evaluate(
            problems,
            method,
            session,
            decoding,
            run_file,
            signature=signature,
            max_in_flight=run.max_in_flight,
            progress=not run.quiet,
            fail_fast=run.fail_fast,
            samples=run.samples,
        )
    except RunStopped as stop:
        return _stopped(session, stop)
    summary = summarize(result.rows, run=out.stem, wall_s=result.wall_s, timed_rows=result.new_rows)
    print(markdown_table([summary]))
    print(f"results: {out}")
    if run.plot:
        print(f"plot: {plot_accuracy_vs_tokens([summary], run.plot)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """``reasonexit sweep``: check every setting, run each on one engine into its run file, print the table."""
    from .engine import get_session
    from .runs.sweep import SweepOptions, sweep_main

    run, decoding, config = _eval_settings(args, SweepOptions)
    session = get_session(config)
    try:
        sweep_main(run, session, decoding)
        return 0
    except RunStopped as stop:
        return _stopped(session, stop)


def cmd_calibrate(args: argparse.Namespace, extra: list[str]) -> int:
    """``reasonexit calibrate``: run, choose with the guarantee, write the settings file."""
    from .engine import get_session
    from .runs.calibrate import CalibrateOptions, calibrate_command

    run, decoding, config = _eval_settings(args, CalibrateOptions)
    session = get_session(config)
    print(
        f"model: {config.model} ({session.markers.describe()}); calibrating {run.method} {run.param}", file=sys.stderr
    )
    try:
        return 0 if calibrate_command(run, _method_options(extra), session, decoding)["chosen"] is not None else 1
    except RunStopped as stop:
        return _stopped(session, stop)


def _stopped(session: Any, stop: RunStopped) -> int:
    """Report a run (or the setting of a sweep or calibration) that stopped early; its rows stay
    for a resume. After an interrupt or a dead engine the engine is closed, in order: requests were
    aborted and rows flushed first."""
    if stop.signum is not None or stop.engine_dead:
        session.close()
    if stop.signum is not None:
        print(f"interrupted: {stop.done} of {stop.total} done; re-run the same command to resume", file=sys.stderr)
        return 128 + stop.signum
    print(
        f"reasonexit: error: {stop.reason}; {stop.done} of {stop.total} done; re-run the same command to resume",
        file=sys.stderr,
    )
    return 1


def cmd_serve(args: argparse.Namespace, extra: list[str]) -> int:
    """``reasonexit serve``: check the settings, start the engine, serve until interrupted."""
    from . import step_rules
    from .engine import EngineConfig, get_session
    from .methods.base import Decoding, make_method
    from .options import collect
    from .runs.calibrate import with_settings
    from .serve import ServeOptions, serve

    values = vars(args)
    options = ServeOptions(**collect(ServeOptions, values))
    decoding = Decoding(**collect(Decoding, values))  # checks itself
    method, method_options = with_settings(options.settings, options.method, _method_options(extra))
    options = dataclasses.replace(options, method=method)
    make_method(options.method, method_options)  # checked before anything starts
    if not 0 < options.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {options.port}")
    engine_kw = collect(EngineConfig, values, skip=("seed",), dest_prefix="engine.")
    # every per-step rule on the engine, so requests may choose any method
    engine_kw["step_rules"] = tuple(sorted({*engine_kw.get("step_rules", ()), *step_rules.RULES}))
    config = EngineConfig(**engine_kw, seed=decoding.seed)
    session = get_session(config)
    print(
        f"model: {config.model} ({session.markers.describe()}); default method {options.method}; "
        f"starting the engine, then serving on http://{options.host}:{options.port}/v1",
        file=sys.stderr,
    )
    serve(session, options, method_options=method_options, decoding=decoding)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``reasonexit report``: side-by-side table of run files and a plot."""
    from .runs.report import report
    from .runs.sweep import sweep_report

    if len(args.runs) == 1 and Path(args.runs[0]).is_dir():
        table, png = sweep_report(args.runs[0], plot=bool(args.plot))
        print(table)
        if png:
            print(f"plot: {png}")
        return 0
    table, png = report(args.runs, args.plot or None)
    print(table)
    if png:
        print(f"plot: {png}")
    return 0


def cmd_methods(name: str | None = None) -> int:
    """``reasonexit methods [NAME]``: every method with its options, or one method's options with help."""
    from .methods.base import method_class, method_names
    from .options import describe

    for m in [name] if name else method_names():
        cls = method_class(m)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{m}: {doc}")
        for line in describe(cls.Params):
            print(f"    {line}")
    return 0


def _methods_to_describe(argv: list[str]) -> tuple[str, ...]:
    """For ``eval --help`` and ``serve --help``: the ``--method`` (default vanilla) and ``--inner`` names
    on the line."""
    if not ({"-h", "--help"} & set(argv)) or argv[:1] not in (["eval"], ["serve"]):
        return ()
    from .methods.base import method_names

    names = []
    for flag, default in (("--method", "vanilla"), ("--inner", None)):
        value = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag), default)
        value = next((a.split("=", 1)[1] for a in argv if a.startswith(flag + "=")), value)
        if value in method_names():
            names.append(value)
    return tuple(names)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``reasonexit`` console script.

    Called without ``argv`` (as the ``reasonexit`` command), it also shuts the engine down before
    returning, with SIGINT/SIGTERM ignored, so a late signal cannot cut the shutdown short and
    leave engine processes or shared memory behind.
    """
    as_command = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in argv:
        # before vLLM is imported: its logging level is read once, at import
        os.environ["REASONEXIT_VERBOSE"] = "1"
        os.environ["VLLM_LOGGING_LEVEL"] = "INFO"
    from .engine.logs import quiet_by_default, route_logs

    quiet_by_default()
    if argv[:1] == ["train"]:
        # Training has its own parser (and heavy imports): hand the rest of the line over.
        from .training.cli import main as train_main

        return train_main(argv[1:])
    parser = build_parser(_methods_to_describe(argv))
    args, extra = parser.parse_known_args(argv)
    route_logs(str(getattr(args, "quiet", "false")).lower() in ("1", "true", "yes", "on"))
    try:
        if args.command == "eval":
            # installed before vLLM is imported (seconds): a signal at any point gets one line
            return _with_signal_handlers(cmd_eval, args, extra)
        if args.command == "serve":
            return cmd_serve(args, extra)
        if args.command == "sweep":
            if extra:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            return _with_signal_handlers(cmd_sweep, args)
        if args.command == "calibrate":
            return _with_signal_handlers(cmd_calibrate, args, extra)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command == "report":
            return cmd_report(args)
        if args.command == "methods":
            return cmd_methods(args.name)
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
        if as_command and "reasonexit.engine.session" in sys.modules:
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
