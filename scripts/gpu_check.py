"""What a GPU user runs first: does reasonexit work on this vLLM build, this GPU and this model?

    python scripts/gpu_check.py --model Qwen/Qwen3-8B --reasoning-parser qwen3
    python scripts/gpu_check.py                  # the bundled testbed (works on CPU too)

One command's worth of everything the CPU build of vLLM cannot show:

- every method (and both budget implementations) on the model, once under each model runner the
  build has: Model Runner V2 (the CUDA build's default) and V1 (``VLLM_USE_V2_MODEL_RUNNER=0``),
  each in a process of its own (a fresh engine, forked as vLLM forks it on GPU);
- greedy methods (vanilla, budget, deer, flashthink) give the same answers, exit reasons, output
  tokens and exit positions under both runners;
- the cost of reasonexit's own per-step rule: decode throughput of ``budget --impl reasonexit``
  with a budget never reached against vanilla on the same problems and engine (same tokens);
- FlashThink with its verifier engine beside the main one: on the testbed (verifier ``auto``:
  the trained one) a second engine on the same GPU, within the memory shares;
- the engine-step count ``reasonexit sweep`` reports (vLLM's per-iteration statistics, counted
  by a stat logger): under asynchronous scheduling and speculative decoding, which the CPU build
  never runs, the vanilla run's steps must be between 1 and its tokens, and the tokens vLLM's
  statistics saw must equal the tokens the run returned.

Prints one table per runner, then the checks; exits 1 on any failure or mismatch, 2 on bad input.
The CPU build has only the V1 runner, so on CPU only that runner is run (the test suite runs it so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

#: Methods whose greedy runs must agree across the model runners.
GREEDY = ("vanilla", "budget", "budget (impl=reasonexit)", "deer", "flashthink")
RULE_COST = "budget (impl=reasonexit, budget not reached)"
#: How a runner's process hands its report to the parent (a line of its stdout; vLLM logs there too).
REPORT = "gpu_check report: "


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory or hub id (default: the bundled testbed)")
    ap.add_argument("--dataset", default="synthetic", help="dataset name or local file")
    ap.add_argument("--limit", type=int, default=4, help="problems per method")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--reasoning-parser", default=None, help="vLLM reasoning parser (deepseek_r1, qwen3, ...)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument(
        "--gpu-memory-utilization", type=float, default=None,
        help="the main engine's GPU memory share (default: 0.9 less the FlashThink verifier's)",
    )  # fmt: skip
    ap.add_argument("--runners", default=None, help="model runners to check, e.g. v2,v1 (default: all the build has)")
    ap.add_argument("--runner", default=None, help=argparse.SUPPRESS)  # one runner, in a child process
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the check and print its tables; the exit status says whether everything ran and agreed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.runner:
        return _one_runner(args)

    from reasonexit.engine import platform as device

    runners = args.runners.split(",") if args.runners else (["v2", "v1"] if device.on_gpu() else ["v1"])
    if any(r not in ("v1", "v2") for r in runners):
        print(f"gpu_check: error: --runners takes v1 and/or v2, got {args.runners!r}", file=sys.stderr)
        return 2
    reports: dict[str, dict[str, Any]] = {}
    for runner in runners:
        env = dict(os.environ, VLLM_USE_V2_MODEL_RUNNER="1" if runner == "v2" else "0")
        print(f"== model runner {runner} (VLLM_USE_V2_MODEL_RUNNER={env['VLLM_USE_V2_MODEL_RUNNER']})", flush=True)
        proc = subprocess.run([sys.executable, __file__, *argv, "--runner", runner], env=env,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
        lines = proc.stdout.splitlines()
        report = next((ln[len(REPORT) :] for ln in lines if ln.startswith(REPORT)), None)
        print("\n".join(ln for ln in lines if not ln.startswith(REPORT)), flush=True)
        if proc.returncode == 2:
            return 2
        if report is None:
            print(f"FAIL runner {runner}: the check process ended with status {proc.returncode}", flush=True)
            reports[runner] = {"failed": ["(engine)"], "results": {}}
            continue
        reports[runner] = json.loads(report)
    return _verdict(reports)


def _verdict(reports: dict[str, dict[str, Any]]) -> int:
    """The checks across runners; 0 when everything ran and agreed."""
    problems: list[str] = []
    for runner, rep in reports.items():
        problems += [f"{runner}: {label} failed" for label in rep["failed"]]
        if rep.get("runner") not in (None, runner):
            problems.append(f"asked for {runner}, vLLM ran {rep['runner']}")
        cost = rep.get("rule_cost")
        if cost is not None:
            print(f"{runner}: per-step rule cost: budget (impl=reasonexit) decoded {cost['rule_tok_s']:.0f} tok/s vs "
                  f"vanilla {cost['plain_tok_s']:.0f} tok/s (x{cost['ratio']:.2f}), same tokens: {cost['same_tokens']}")
            if not cost["same_tokens"]:
                problems.append(f"{runner}: a budget that is never reached changed the output")
        if rep.get("verifier"):
            print(f"{runner}: flashthink verifier: {rep['verifier']}")
        steps = rep.get("steps")
        if steps is not None:
            print(f"{runner}: engine steps (vanilla): {steps['steps']} for {steps['tokens']} tokens; "
                  f"vLLM's statistics saw {steps['generated']} generated tokens")  # fmt: skip
            if not 0 < steps["steps"] <= steps["tokens"] or steps["generated"] != steps["tokens"]:
                problems.append(f"{runner}: the engine-step count does not match the run")
    if len(reports) == 2:
        (ra, a), (rb, b) = reports.items()
        for label in GREEDY:
            if label not in a["results"] or label not in b["results"]:
                continue
            diff = [pid for pid in a["results"][label] if a["results"][label][pid] != b["results"][label].get(pid)]
            print(f"{label}: {ra} and {rb} agree on {len(a['results'][label]) - len(diff)} of "
                  f"{len(a['results'][label])} problems (answer, exit reason, output tokens, exit position)")
            if diff:
                problems.append(f"{label}: {ra} and {rb} differ on {', '.join(diff)}")
    for p in problems:
        print(f"FAIL {p}")
    if problems:
        print(f"gpu_check: {len(problems)} failures")
        return 1
    print(f"gpu_check: every method ran on {' and '.join(reports)}" + (" and agreed" if len(reports) == 2 else ""))
    return 0


def _one_runner(args: argparse.Namespace) -> int:
    """Every method on one engine (this process's runner); the report as a line of stdout."""
    from reasonexit.data.datasets import load_problems
    from reasonexit.engine import DEFAULT_MODEL, EngineConfig, get_session
    from reasonexit.errors import UserError
    from reasonexit.methods import make_method, method_names
    from reasonexit.methods.base import Decoding
    from reasonexit.runs.report import markdown_table, summarize
    from reasonexit.runs.runner import jobs_for, solve_all

    try:
        # Every method is built before the engine starts, so the engine registers their per-step
        # rules and leaves a FlashThink verifier its share of the GPU.
        methods = [(name, make_method(name)) for name in method_names()]
        methods.append(("budget (impl=reasonexit)", make_method("budget", {"impl": "reasonexit"})))
        methods.append((RULE_COST, make_method("budget", {"impl": "reasonexit", "max_thinking_tokens": 1 << 20})))
        config = EngineConfig(
            model=args.model or DEFAULT_MODEL,
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            tensor_parallel_size=args.tensor_parallel_size,
            reasoning_parser=args.reasoning_parser,
            gpu_memory_utilization=args.gpu_memory_utilization,
        )
        session = get_session(config)
        problems = load_problems(args.dataset, limit=args.limit)
        start = time.perf_counter()
        session.start()
        print(f"engine started in {time.perf_counter() - start:.1f}s", flush=True)
        jobs = jobs_for(session, problems)
    except UserError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2

    import vllm

    share = f"; GPU memory share {session.gpu_memory_utilization}" if session.gpu_memory_utilization else ""
    print(f"vllm {vllm.__version__}; model runner: {session.runner}; registered rules: {sorted(session.step_rules)}"
          f"{share}")  # fmt: skip
    print(f"model: {config.model}; {session.markers.describe()}")
    decoding = Decoding(max_tokens=args.max_tokens, seed=0)
    rows, failed, per_problem, walls = [], [], {}, {}
    steps_seen: dict[str, int] | None = None
    for label, method in methods:
        start = time.perf_counter()
        steps0, generated0 = session.steps.steps, session.steps.generated_tokens
        try:
            results = session.run(solve_all(session, method, jobs, decoding))
        except Exception as exc:  # noqa: BLE001 - the check reports every failure and goes on
            failed.append(label)
            print(f"FAIL {label}: {type(exc).__name__}: {str(exc).strip().splitlines()[:1]}", file=sys.stderr)
            continue
        wall = time.perf_counter() - start
        failed += [f"{label} ({r.id}: {r.error})" for r in results if r.exit_reason == "error"]
        rows.append(summarize([r.to_row() for r in results], run=label, wall_s=wall))
        walls[label] = (wall, [r.output_tokens for r in results])
        if label == "vanilla":
            steps_seen = {
                "steps": session.steps.steps - steps0,
                "generated": session.steps.generated_tokens - generated0,
                "tokens": sum(r.compute_tokens for r in results),
            }
        per_problem[label] = {
            r.id: [r.answer, r.exit_reason, r.output_tokens, r.info.get("exit_pos")] for r in results
        }
    if rows:
        print(markdown_table(rows))
    report: dict[str, Any] = {
        "runner": session.runner, "failed": failed, "results": per_problem, "steps": steps_seen,
    }  # fmt: skip
    if "vanilla" in walls and RULE_COST in walls:
        (plain_wall, plain_tokens), (rule_wall, rule_tokens) = walls["vanilla"], walls[RULE_COST]
        report["rule_cost"] = {
            "plain_tok_s": sum(plain_tokens) / plain_wall,
            "rule_tok_s": sum(rule_tokens) / rule_wall,
            "ratio": (sum(rule_tokens) / rule_wall) / (sum(plain_tokens) / plain_wall),
            "same_tokens": plain_tokens == rule_tokens,
        }
    flash = dict(methods)["flashthink"]
    built = getattr(flash, "_verifiers", {}).get(id(session))
    other = getattr(built, "session", None)
    if built is not None and other is not None:
        where = "its own engine" if other is not session else "the main engine"
        share = f", GPU share {other.gpu_memory_utilization}" if other.gpu_memory_utilization else ""
        report["verifier"] = f"{built.kind} on {where}{share}"
    session.close()
    print(REPORT + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
