"""Report on the bundled tiny reasoning model, run through the project's vLLM engine.

    python scripts/testbed_report.py --limit 300

Greedy decoding on held-out synthetic test problems. Prints whether outputs are well-formed
(thinking closed and a boxed answer), accuracy overall and per difficulty, how much the traces
overthink (re-check passages after the model first states its final answer, and the share of
thinking tokens after that point), mean thinking and answer tokens, and decode throughput.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict


def main() -> int:
    """Run the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled testbed)")
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0, help="synthetic test-set seed")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    from reasonexit.data.datasets import load_problems
    from reasonexit.data.synthetic import count_rechecks, first_answer_position
    from reasonexit.engine import DEFAULT_MODEL, EngineConfig, get_session
    from reasonexit.methods import make_method
    from reasonexit.methods.base import Decoding
    from reasonexit.runs.runner import jobs_for, solve_all

    model = args.model or DEFAULT_MODEL
    session = get_session(EngineConfig(model=model, dtype=args.dtype, max_model_len=2048))
    problems = load_problems("synthetic", limit=args.limit, synthetic_seed=args.seed)
    jobs = jobs_for(session, problems)
    session.start()
    start = time.perf_counter()
    results = session.run(solve_all(session, make_method("vanilla"), jobs, Decoding(max_tokens=args.max_tokens)))
    wall = time.perf_counter() - start

    n = len(results)
    well_formed = sum(r.closed_thinking and r.answer is not None for r in results)
    by_diff: dict[int, list[bool]] = defaultdict(list)
    rechecked = 0
    after_fracs: list[float] = []
    for prob, r in zip(problems, results, strict=True):
        by_diff[int(prob.meta.get("difficulty", 0))].append(bool(r.correct))
        if r.answer is None or r.thinking_tokens == 0:
            continue
        pos = first_answer_position(r.thinking, r.answer)
        if pos is None:
            after_fracs.append(0.0)
            continue
        rechecked += count_rechecks(r.thinking, pos) > 0
        # thinking tokens up to the char offset: the decoded prefix length grows with the token
        # count, so a binary search finds the first token that reaches past it
        ids = r.token_ids[: r.thinking_tokens]
        lo, hi = 0, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(session.decode(ids[: mid + 1])) > pos:
                hi = mid
            else:
                lo = mid + 1
        before = lo
        after_fracs.append((len(ids) - before) / len(ids))

    acc = 100 * sum(bool(r.correct) for r in results) / n
    out_tokens = sum(r.output_tokens for r in results)
    print(f"\ntestbed report: {model}\n{n} held-out synthetic test problems, greedy, max_tokens={args.max_tokens}\n")
    print(f"well-formed (thinking closed + boxed answer): {100 * well_formed / n:.1f}%   (target >= 95%)")
    print(f"accuracy: {acc:.1f}%   (target 50-95%)")
    for d in sorted(by_diff):
        v = by_diff[d]
        print(f"  difficulty {d}: {100 * sum(v) / len(v):.1f}% of {len(v)}")
    print(f"traces with a re-check after the answer is first reached: {100 * rechecked / n:.1f}%   (target >= 60%)")
    mean_after = 100 * sum(after_fracs) / max(len(after_fracs), 1)
    print(f"mean share of thinking tokens after that point: {mean_after:.1f}%   (target >= 35%)")
    print(f"mean thinking tokens: {sum(r.thinking_tokens for r in results) / n:.1f}")
    print(f"mean answer tokens: {sum(r.answer_tokens for r in results) / n:.1f}")
    print(f"decode throughput: {out_tokens / wall:.0f} output tokens/s ({out_tokens} tokens in {wall:.1f}s)")
    session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
