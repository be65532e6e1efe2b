"""Throughput and latency of ``reasonexit serve`` against the in-process API, on one engine.

    python scripts/bench_serve.py                       # 64 clients, 256 requests, vanilla and deer
    python scripts/bench_serve.py --clients 4 --requests 8 --max-tokens 64   # a quick check

One engine session serves both paths: the server (``reasonexit.serve.create_app`` under uvicorn on
the engine's loop, as ``reasonexit serve`` runs it, on a loopback port; ``--server-loop thread``
gives it a loop and thread of its own) is driven by streaming ``aiohttp`` clients (to time the first
token) from a process of their own, as real clients are (in the server's process they would compete
with the server and the engine loop for the interpreter), and the in-process path runs the same
controller on the engine loop (``reasonexit.runs.runner.solve_job``, what ``reasonexit.agenerate`` runs
per prompt, after templating and tokenizing the prompt as it does) with a token sink, which times
the first final token the same way the server streams it. Each path keeps ``--clients`` requests in
flight until ``--requests`` have finished; request ``i`` uses seed ``i`` on both paths, so both do
the same work. Each path is warmed up with one round of ``--clients`` requests first (not timed).
The two paths then alternate for ``--rounds`` timed passes each (default 4), each going first in
every other round, and each path's figures pool its passes (on a shared 2-core machine one pass of
either path varied by a fifth from one minute to the next). The engine leaves vLLM's spare core to
the front end, as ``reasonexit serve`` does; ``--all-cores`` binds the model threads to every core
instead, as ``reasonexit eval`` does on a machine of at most 2 cores.

Printed per method and path: requests/s, output tokens/s, p50/p95 latency and time to first token
(TTFT: the first thinking or answer text for the server, the first final token in process); then
per method the ratio of server to in-process throughput (target >= 0.9) and whether deer's p50
latency through the server is below vanilla's. The load average before and after is printed: on a
shared machine the figures move with the other load.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
import os
import re
import socket
import statistics
import threading
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def _drive(n: int, clients: int, one) -> tuple[float, list[tuple[float, float | None, int]]]:
    """Run ``one(i)`` for i < n with ``clients`` in flight; wall time and (latency, ttft, tokens) each."""
    queue = iter(range(n))
    out: list[tuple[float, float | None, int]] = []

    async def worker() -> None:
        for i in queue:
            out.append(await one(i))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - start, out


#: A chunk carrying text (thinking or answer), not the empty role chunk.
_TEXT = re.compile(rb'"(?:reasoning_content|content|text)": "[^"]')


def _client_process(port: int, prompts: list[str], method: str, clients: int, max_tokens: int, warm: bool) -> tuple:
    """The server path's load: streaming chat requests from ``aiohttp`` (vLLM's own dependency,
    and what its serving benchmark uses) in a process of its own, as real clients are (in this
    process they would compete with the server and the engine loop for the interpreter). On 2
    cores the load generator's CPU time is taken from the server and the engine, so it reads the
    event stream cheaply: blocks are read as they arrive and scanned, and only the usage chunk is
    parsed. (The ``openai`` client, which builds a pydantic object per chunk, is what
    tests/serve/test_serve.py uses.) Returns (wall, rows) of the timed pass, after a warm-up round when
    ``warm``."""
    import aiohttp

    async def run() -> tuple:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        # idle connections are dropped before uvicorn's 5 s keep-alive ends, so a request never
        # goes out on a connection the server is closing (aiohttp keeps them 15 s by default)
        connector = aiohttp.TCPConnector(limit=clients, keepalive_timeout=2.0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=3600)) as client:

            async def via_server(i: int) -> tuple[float, float | None, int]:
                start = time.perf_counter()
                first = None
                tokens = 0
                body = {
                    "model": "bench", "messages": [{"role": "user", "content": prompts[i]}],
                    "max_tokens": max_tokens, "seed": i, "stream": True,
                    "stream_options": {"include_usage": True}, "reasonexit": {"method": method},
                }  # fmt: skip
                last = b""  # the end of the stream so far (the usage chunk is in the last write)
                async with client.post(url, json=body) as resp:
                    resp.raise_for_status()
                    async for block in resp.content.iter_any():  # whatever has arrived, not line by line
                        # a text delta may straddle two blocks
                        if first is None and _TEXT.search(last[-64:] + block):
                            first = time.perf_counter() - start
                        last = (last + block)[-8192:]
                for line in last.split(b"\n"):
                    if line.startswith(b"data: {") and b'"usage": {' in line:
                        usage = json.loads(line[6:]).get("usage")
                        if usage:
                            tokens = usage["completion_tokens"]
                return time.perf_counter() - start, first, tokens

            if warm:
                await _drive(min(clients, len(prompts)), clients, via_server)  # warm-up, not timed
            cpu = _cpu_s(os.getpid())
            wall, rows = await _drive(len(prompts), clients, via_server)
            return wall, rows, _cpu_s(os.getpid()) - cpu

    return asyncio.run(run())


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process so far."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _engine_cpu() -> dict[str, float]:
    """CPU seconds so far of this process and of the engine processes, by process name."""
    import psutil

    out = {"server process": _cpu_s(os.getpid())}
    for proc in psutil.Process().children(recursive=True):
        name = proc.name()
        if name.startswith("VLLM::"):
            out[name[6:]] = out.get(name[6:], 0.0) + _cpu_s(proc.pid)
    return out


def _row(method: str, path: str, wall: float, rows: list[tuple[float, float | None, int]]) -> str:
    lat = [r[0] for r in rows]
    ttft = [r[1] for r in rows if r[1] is not None]
    tokens = sum(r[2] for r in rows)
    t50 = f"{_pct(ttft, 50):.2f}" if ttft else "-"
    t95 = f"{_pct(ttft, 95):.2f}" if ttft else "-"
    return (
        f"| {method} | {path} | {len(rows)} | {len(rows) / wall:.2f} | {tokens / wall:.1f} | "
        f"{_pct(lat, 50):.2f} | {_pct(lat, 95):.2f} | {t50} | {t95} |"
    )


def main() -> None:
    import uvicorn

    from reasonexit.data.prompts import format_prompt
    from reasonexit.data.synthetic import generate_problems
    from reasonexit.engine import EngineConfig, get_session, reserve_spare_core
    from reasonexit.methods.base import Decoding, make_method
    from reasonexit.runs.runner import Job, solve_job
    from reasonexit.serve import create_app, start_server

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--methods", default="vanilla,deer")
    ap.add_argument("--rounds", type=int, default=4, help="timed passes per path, alternating, each path going first "
                    "in every other round (figures pool them)")
    ap.add_argument("--model", default=None, help="model (default: the bundled tiny reasoner)")
    ap.add_argument("--stream-interval", type=float, default=None, help="the server's --stream-interval (seconds; "
                    "default: the server's default)")
    ap.add_argument(
        "--server-loop",
        choices=("engine", "thread"),
        default="engine",
        help="engine: uvicorn on the engine's loop, as `reasonexit serve` runs it; thread: its own loop and thread",
    )
    ap.add_argument("--all-cores", action="store_true", help="bind the model threads to every core, as `reasonexit "
                    "eval` does on a small CPU machine (default: leave the front end vLLM's spare core, as "
                    "`reasonexit serve` does)")
    ap.add_argument("--paths", default="server,in-process", help="which paths to time (one alone, e.g. to profile "
                    "it: no ratio is printed then)")
    args = ap.parse_args()
    path_names = {"server": "server", "in-process": "in-process API"}
    if not args.paths or set(args.paths.split(",")) - set(path_names):
        ap.error(f"--paths takes server, in-process or both (comma-separated), got {args.paths!r}")
    paths = [path_names[p] for p in dict.fromkeys(args.paths.split(","))]
    if args.stream_interval is None:
        from reasonexit.serve import ServeOptions

        args.stream_interval = ServeOptions().stream_interval

    config = EngineConfig(**({"model": args.model} if args.model else {}), step_rules=("budget",))
    if not args.all_cores:
        reserve_spare_core()  # as ``reasonexit serve`` does
    session = get_session(config)
    session.start()
    prompts = [format_prompt(p["problem"]) for p in generate_problems(args.requests, split="test", seed=2026)]

    app = create_app(
        session,
        decoding=Decoding(max_tokens=args.max_tokens),
        served_model_name="bench",
        stream_interval=args.stream_interval,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if args.server_loop == "engine":  # as ``reasonexit serve`` runs it
        server = start_server(app, session, port=port)
    else:
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)

    stats: dict[tuple[str, str], dict[str, float]] = {}
    cpu_of: dict[tuple[str, str], dict[str, float]] = collections.defaultdict(dict)

    async def run_in_process(method: str, warm: bool) -> tuple:
        meth = make_method(method)

        async def in_process(i: int) -> tuple[float, float | None, int]:
            start = time.perf_counter()
            first: list[float] = []

            def sink(ids: list[int]) -> None:  # on the engine loop, as the server's sinks are
                if not first:
                    first.append(time.perf_counter() - start)

            # the prompt is templated and tokenized per request, as ``agenerate`` and the server do
            ids = session.chat_prompt_ids(prompts[i])
            session.check_prompt(ids, f"prompt {i + 1}")
            job = Job(id=f"bench{i}", prompt_ids=ids)
            res = await session.arun(
                solve_job(session, meth, job, Decoding(max_tokens=args.max_tokens, seed=i), 0, sink)
            )
            return time.perf_counter() - start, (first[0] if first else None), res.output_tokens

        if warm:
            await _drive(min(args.clients, args.requests), args.clients, in_process)  # warm-up, not timed
        return await _drive(args.requests, args.clients, in_process)

    def run_all() -> None:
        ctx = multiprocessing.get_context("spawn")
        for method in args.methods.split(","):
            walls: dict[str, list[float]] = {"server": [], "in-process API": []}
            rows_of: dict[str, list] = {"server": [], "in-process API": []}
            for k in range(args.rounds):  # the paths alternate, so a burst of other load hits both
                # and each goes first in every other round (the first passes on a new engine are the
                # slowest: the KV cache's pages are touched for the first time)
                order = ("server", "in-process API") if k % 2 == 0 else ("in-process API", "server")
                for path in (p for p in order if p in paths):
                    before = _engine_cpu()
                    if path == "server":
                        with ctx.Pool(1) as pool:
                            wall, rows, client_cpu = pool.apply(
                                _client_process, (port, prompts, method, args.clients, args.max_tokens, k == 0)
                            )
                    else:
                        wall, rows, client_cpu = *asyncio.run(run_in_process(method, k == 0)), 0.0
                    used = cpu_of[method, path]
                    for name, t in _engine_cpu().items():
                        used[name] = used.get(name, 0.0) + t - before.get(name, 0.0)
                    used["clients"] = used.get("clients", 0.0) + client_cpu
                    walls[path].append(wall)
                    rows_of[path].extend(rows)
                    if args.rounds > 1:
                        print(f"  round {k + 1} {method} {path}: {sum(r[2] for r in rows) / wall:.1f} tok/s",
                              flush=True)
            for path in paths:
                wall, rows = sum(walls[path]), rows_of[path]
                stats[method, path] = {"tok_s": sum(r[2] for r in rows) / wall, "req_s": len(rows) / wall,
                                       "tokens": sum(r[2] for r in rows),
                                       "p50": _pct([r[0] for r in rows], 50)}
                table.append(_row(method, path, wall, rows))

    print(f"{args.clients} clients, {args.requests} requests x {args.rounds} rounds per path, "
          f"max_tokens {args.max_tokens}, "
          f"model {os.path.basename(config.model)}, server loop {args.server_loop}, "
          f"stream interval {args.stream_interval:g} s, "
          f"model threads on cores {session.cpu_binding or 'of vLLM default (last core spare)'}, "
          f"load average before {os.getloadavg()[0]:.2f}")
    table = ["| method | path | requests | req/s | output tok/s | p50 latency s | p95 latency s | p50 TTFT s "
             "| p95 TTFT s |", "|---|---|---|---|---|---|---|---|---|"]
    run_all()
    print("\n".join(table))
    # Where the CPU went (seconds per 1,000 output tokens; warm-up passes included in the server
    # process and engine figures): on 2 cores what the server and its clients use is taken from
    # the engine.
    for (method, path), used in cpu_of.items():
        tokens = stats[method, path]["tokens"] / 1000
        parts = ", ".join(f"{name} {t / tokens:.3f}" for name, t in sorted(used.items()))
        print(f"CPU s per 1k output tokens, {method} {path}: {parts}")
    print(f"load average after {os.getloadavg()[0]:.2f}")
    for method in args.methods.split(",") if len(paths) == 2 else ():
        srv, inp = stats[method, "server"], stats[method, "in-process API"]
        ratio = srv["tok_s"] / inp["tok_s"]
        print(f"{method}: server / in-process throughput {ratio:.2f} (output tok/s; req/s "
              f"{srv['req_s'] / inp['req_s']:.2f}), target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'}")
    if ("deer", "server") in stats and ("vanilla", "server") in stats:
        d, v = stats["deer", "server"]["p50"], stats["vanilla", "server"]["p50"]
        print(f"deer p50 latency through the server {d:.2f} s vs vanilla {v:.2f} s: "
              f"{'lower' if d < v else 'NOT lower'}")
    if args.server_loop == "engine":
        server.stop()
    else:
        server.should_exit = True
        thread.join(timeout=10)
    session.close()


if __name__ == "__main__":
    main()
