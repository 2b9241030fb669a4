"""Per-call time of the heads' proposal, whole vocabulary against sub-vocabularies (a microbenchmark).

What a Medusa step spends in its heads (the K residual blocks and the projection onto the
vocabulary, then top-k) for the real backbone and heads, eager and compiled (`medusa.compiled`),
with the projection cut to the N most frequent training targets (`medusa.subvocab`), beside the
share of training targets those N cover. One process, one machine: compare rows with each other,
not with other runs. Prints a table; `--out FILE` also writes it as CSV.

Usage::

    python -m bench.heads_speed --heads results/heads/smollm2-135m-medusa1 --sizes 0,4096,8192,16384 --threads 1
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from common.cli import Parser, add_threads, apply_threads, comma_list, run_cli
from common.errors import WorkbenchError
from common.io import write_csv
from medusa.backbone import DEFAULT_BACKBONE, load_backbone
from medusa.compiled import CompiledProposer
from medusa.resolve import resolve_heads
from medusa.subvocab import SubVocabHeads, coverage, proposal_vocab, read_target_counts

MODES = ("eager", "compiled")


def per_call_ms(proposer, hidden: torch.Tensor, top_k: int, calls: int) -> float:
    """Mean wall time of one proposal in ms, after warm-up calls (which also compile)."""
    for _ in range(5):
        proposer.propose(hidden, [], top_k)
    t0 = time.perf_counter()
    for _ in range(calls):
        proposer.propose(hidden, [], top_k)
    return 1e3 * (time.perf_counter() - t0) / calls


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m bench.heads_speed", description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--heads", default=None, help="heads folder (default: the shipped heads); needs target_counts.npy for sizes > 0")
    p.add_argument("--sizes", default="0,4096,8192,16384", help="proposal vocabulary sizes, 0 = the whole vocabulary")
    p.add_argument("--modes", default=",".join(MODES), help="eager, compiled")
    p.add_argument("--top-k", type=int, default=10, help="candidates per head")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--out", default=None, help="also write the table as CSV here")
    add_threads(p)
    args = p.parse_args(argv)
    sizes = comma_list(args.sizes, int, "--sizes")
    modes = comma_list(args.modes, str, "--modes")
    if any(m not in MODES for m in modes) or any(0 < s < args.top_k or s < 0 for s in sizes) or args.calls < 1:
        raise WorkbenchError(f"--modes must be among {', '.join(MODES)}, --sizes 0 or >= --top-k, --calls >= 1")
    apply_threads(args.threads)
    backbone = load_backbone(args.backbone)
    resolved = resolve_heads(args.heads, backbone)
    counts = read_target_counts(resolved.folder) if any(sizes) else None
    hidden = torch.randn(backbone.hidden_size, generator=torch.Generator().manual_seed(0)).to(backbone.dtype)
    rows = []
    for size in sizes:
        heads = resolved.heads if size == 0 else SubVocabHeads(resolved.heads, proposal_vocab(resolved.folder, size))
        for mode in modes:
            proposer = CompiledProposer(heads, backbone.device) if mode == "compiled" else heads
            rows.append({"heads": resolved.name, "vocab": size or backbone.vocab_size, "mode": mode,
                         "coverage": 1.0 if size == 0 or counts is None else round(coverage(counts, size), 4),
                         "ms_per_call": round(per_call_ms(proposer, hidden, args.top_k, args.calls), 3),
                         "threads": torch.get_num_threads(), "device": str(backbone.device)})
    table = pd.DataFrame(rows)
    print(table.drop(columns=["heads"]).to_string(index=False))
    if args.out:
        write_csv(table, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
