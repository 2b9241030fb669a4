"""Per-call time of the per-step tree pieces (a microbenchmark, not a test; prints, writes nothing).

What one decoding step would add on top of the verify forward when its tree is built per step:
the calibrated-confidence map over the heads' top-k probabilities (`trees.confidence`), the
dynamic tree (`trees.dynamic`), its buffers built directly (`medusa.tree_attention.
buffers_from_parents`) against the static builder `tree_buffers` on the same tree, prompt lookup
over a long sequence (`medusa.lookup`) and the hybrid merge (`medusa.hybrid`). Inputs are random
(4 heads x top-10, a synthetic confidence map, a 2k-token sequence with a planted repeat).

Usage::

    python -m bench.per_step_speed                      # N = 16 and 64, CPU
    python -m bench.per_step_speed --budgets 16,64,128 --calls 500 --threads 1
    python -m bench.per_step_speed --device cuda        # buffers and the map on the GPU
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from common.cli import Parser, add_threads, apply_threads, comma_list, run_cli
from common.errors import WorkbenchError
from medusa.hybrid import HybridConfig, hybrid_tree, priority_paths
from medusa.lookup import LookupConfig, lookup_chain
from medusa.tree_attention import buffers_from_parents, tree_buffers
from trees.confidence import fit_confidence
from trees.dynamic import DynamicConfig, dynamic_tree


def per_call_us(fn: Callable[[], Any], calls: int, device: torch.device) -> float:
    """Mean wall time of `fn()` in microseconds (after 10 warm-up calls; the device is synchronised)."""
    for _ in range(10):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1e6 * (time.perf_counter() - t0) / calls


def budget_rows(n: int, conf: torch.Tensor, head_topk: torch.Tensor, chain: list[int], calls: int,
                device: torch.device) -> list[tuple[str, int, float]]:
    """(piece, budget, us per call) of the tree pieces at node budget `n`."""
    cfg = DynamicConfig(budget=n)
    dt = dynamic_tree(conf, cfg)
    tree = dt.tree()

    def per_step() -> None:  # what a step would run: tree, its Tree record, its buffers
        d = dynamic_tree(conf, cfg)
        buffers_from_parents(d.parents, d.depth, d.head, d.rank0, tree=d.tree(), device=device)

    return [
        ("dynamic_tree", n, per_call_us(lambda: dynamic_tree(conf, cfg), calls, device)),
        ("buffers_from_parents", n, per_call_us(
            lambda: buffers_from_parents(dt.parents, dt.depth, dt.head, dt.rank0, tree=tree, device=device),
            calls, device)),
        ("  per step: dynamic tree + Tree + buffers", n, per_call_us(per_step, calls, device)),
        ("tree_buffers (static builder)", n, per_call_us(lambda: tree_buffers(tree, device), calls, device)),
        ("hybrid_tree (10-token chain)", n, per_call_us(
            lambda: hybrid_tree(7, priority_paths(dt), head_topk, chain, HybridConfig(budget=n)), calls, device)),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m bench.per_step_speed", description=__doc__.split("\n")[0])
    p.add_argument("--budgets", default="16,64", help="node budgets to time (default 16,64)")
    p.add_argument("--calls", type=int, default=300, help="timed calls per piece (default 300)")
    p.add_argument("--device", default="cpu", help="where buffers and the confidence map live (default cpu)")
    p.add_argument("--sequence", type=int, default=2048, help="token ids prompt lookup searches (default 2048)")
    add_threads(p)
    args = p.parse_args(argv)
    budgets = comma_list(args.budgets, int, "--budgets")
    if not budgets or min(budgets) < 1 or args.calls < 1 or args.sequence < 4:
        raise WorkbenchError("--budgets must be >= 1, --calls >= 1 and --sequence >= 4")
    try:
        device = torch.device(args.device)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as e:
        raise WorkbenchError(f"--device {args.device}: {str(e).splitlines()[0]}") from None
    apply_threads(args.threads)

    rng = np.random.default_rng(0)
    k, top_k = 4, 10
    cal = pd.DataFrame({"head": np.repeat(np.arange(1, k + 1), 20_000), "prob": rng.random(k * 20_000) ** 2})
    cal["hit"] = rng.random(len(cal)) < cal["prob"] ** 0.7
    cmap = fit_confidence(cal)
    raw = torch.softmax(torch.randn(k, 1000, generator=torch.Generator().manual_seed(0)) * 3, -1).topk(top_k).values
    raw = raw.to(device)
    conf = cmap.apply(raw)
    head_topk = torch.arange(k * top_k).view(k, top_k)
    seq = rng.integers(0, 32_000, size=args.sequence).tolist()
    seq[-3:] = seq[100:103]  # one planted 3-gram repeat
    chain = lookup_chain(seq, LookupConfig())

    rows = [("confidence map (4 x 10)", "-", per_call_us(lambda: cmap.apply(raw), args.calls, device))]
    for n in budgets:
        rows += budget_rows(n, conf, head_topk, chain, args.calls, device)
    rows.append((f"lookup_chain ({args.sequence} ids, list)", "-",
                 per_call_us(lambda: lookup_chain(seq), args.calls, device)))
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.calls} calls each")
    for name, n, us in rows:
        print(f"  {name:42s} N={n!s:>4s}  {us:9.1f} us/call")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
