"""Latency profile of a backbone: verify-forward time by query tokens and context, per device.

A tree is only as good as the verify cost it pays. This measures, on the machine at hand, the time
of one engine verification forward (decoder with a 4D tree-style mask over a static KV cache, plus
the LM head on the query tokens) for n = 1, 2, 4, ..., 256 query tokens after contexts of
128/512/1024 tokens: the median of repeats after warm-up. It also measures the machine's memory
read bandwidth and matrix throughput, so the weights-over-bandwidth floor can be drawn beside it.

    python -m bench.latency                      # SmolLM2 on this CPU -> results/_scratch/latency/<device>.csv
    python -m bench.latency --device cuda --dtype bfloat16 --contexts 128,512,1024
    python -m bench.latency --threads 1 --out results/latency/cpu-amd-epyc-1t.csv   # refresh the committed one

A plain run writes the git-ignored scratch file, never the committed profile under results/latency/
(`make latency` names that one). The tree search reads the CSV through
`trees.cost.load_profile(...).verify_time(n_query, context)`: by default the committed profile of
this device, else the scratch one. Timings are only as good as the machine is idle: a `warning:`
line says when the load average shows other processes on the cores.

CSV columns (one row per context x n_query): device_slug, backbone, context, n_query, median_s,
p10_s, p90_s, decoder_s, lm_head_s, repeats, weight_bytes, mem_bandwidth_gbs, matmul_gflops,
floor_s (weights / bandwidth), then the provenance columns of `common.provenance.Provenance`
(commit, date, device_name, torch_version, transformers_version, threads, dtype). Profiles written
before that schema (columns device, torch, transformers) are read through `upgrade_columns`.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.cli import (
    Parser,
    add_dtype,
    add_threads,
    apply_threads,
    comma_list,
    load_average,
    run_cli,
    warn_if_busy,
)
from common.errors import WorkbenchError
from common.io import display, write_csv
from common.paths import SCRATCH_LATENCY
from common.provenance import PROVENANCE_COLUMNS, Provenance, device_slug
from medusa.backbone import DEFAULT_BACKBONE, Backbone, load_backbone
from medusa.decode import cache_kwarg
from medusa.kv_cache import StaticKV
from medusa.tree_attention import causal_mask
from trees.cost import load_table

MEASURED_COLUMNS = [
    "device_slug", "backbone", "context", "n_query", "median_s", "p10_s", "p90_s", "decoder_s", "lm_head_s",
    "repeats", "weight_bytes", "mem_bandwidth_gbs", "matmul_gflops", "floor_s",
]
COLUMNS = MEASURED_COLUMNS + list(PROVENANCE_COLUMNS)


@dataclass(frozen=True)
class LatencyConfig:
    contexts: tuple[int, ...] = (128, 512, 1024)
    n_queries: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    repeats: int = 7
    warmup: int = 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(device: torch.device, nbytes: int = 1 << 28, repeats: int = 5) -> float:
    """Memory read bandwidth in GB/s: time to sum a large float32 tensor (median of repeats)."""
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    x.sum()
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        x.sum()
        _sync(device)
        times.append(time.perf_counter() - t)
    return nbytes / statistics.median(times) / 1e9


def measure_matmul(device: torch.device, dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """Dense matrix throughput in GFLOP/s for an n x n x n matmul in `dtype` (median of repeats)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def _time_verify(backbone: Backbone, cache: StaticKV, ctx: int, n: int, config: LatencyConfig,
                 gen: torch.Generator) -> tuple[list[float], list[float], list[float]]:
    """Times (decoder, LM head, total) of repeated n-token verify forwards after `ctx` cached tokens."""
    model, device, dtype = backbone.model, backbone.device, backbone.dtype
    decoder, lm_head = model.base_model, model.get_output_embeddings()
    arg = cache_kwarg(decoder)
    ids = torch.randint(0, backbone.vocab_size, (1, n), generator=gen).to(device)
    pos = torch.arange(ctx, ctx + n, device=device)[None]
    # A causal block stands in for the tree mask: same shape, same cost.
    full = torch.zeros(1, 1, n, ctx + n, dtype=dtype, device=device)
    full[..., ctx:] = causal_mask(n, n, dtype, device)
    dec_t, head_t, tot_t = [], [], []
    for r in range(config.warmup + config.repeats):
        cache.length = ctx
        _sync(device)
        t0 = time.perf_counter()
        h = decoder(input_ids=ids, position_ids=pos, attention_mask=full, use_cache=True,
                    **{arg: cache.hf_cache}).last_hidden_state
        _sync(device)
        t1 = time.perf_counter()
        lm_head(h[0])
        _sync(device)
        t2 = time.perf_counter()
        if r >= config.warmup:
            dec_t.append(t1 - t0)
            head_t.append(t2 - t1)
            tot_t.append(t2 - t0)
    cache.length = ctx
    return dec_t, head_t, tot_t


def _prefill_context(backbone: Backbone, ctx: int, capacity: int, gen: torch.Generator) -> StaticKV:
    """A static cache holding `ctx` random prompt tokens."""
    model, device = backbone.model, backbone.device
    cache = StaticKV(int(model.config.num_hidden_layers), capacity)
    prompt = torch.randint(0, backbone.vocab_size, (1, ctx), generator=gen).to(device)
    model.base_model(input_ids=prompt, position_ids=torch.arange(ctx, device=device)[None],
                     attention_mask=causal_mask(ctx, ctx, backbone.dtype, device), use_cache=True,
                     **{cache_kwarg(model.base_model): cache.hf_cache})
    cache.advance(ctx)
    return cache


@torch.inference_mode()
def profile_backbone(backbone: Backbone, config: LatencyConfig, progress: bool = True) -> pd.DataFrame:
    """Measure verify-forward times; returns the tidy table (see module docstring)."""
    device = backbone.device
    if max(config.contexts) + max(config.n_queries) > backbone.max_positions:
        raise WorkbenchError(f"context {max(config.contexts)} + {max(config.n_queries)} queries exceeds the model's {backbone.max_positions} positions")
    weight_bytes = sum(p.numel() * p.element_size() for p in backbone.model.parameters())
    bandwidth = measure_bandwidth(device)
    machine = {"weight_bytes": weight_bytes, "mem_bandwidth_gbs": bandwidth,
               "matmul_gflops": measure_matmul(device, backbone.dtype), "floor_s": weight_bytes / (bandwidth * 1e9)}
    prov = Provenance.collect(str(device), backbone.dtype).as_dict()
    gen = torch.Generator().manual_seed(0)
    rows = []
    total = len(config.contexts) * len(config.n_queries)
    for ctx in config.contexts:
        cache = _prefill_context(backbone, ctx, ctx + max(config.n_queries), gen)
        for n in config.n_queries:
            dec_t, head_t, tot_t = _time_verify(backbone, cache, ctx, n, config, gen)
            rows.append({
                "device_slug": device_slug(str(device)), "backbone": backbone.name, "context": ctx, "n_query": n,
                "median_s": statistics.median(tot_t), "p10_s": float(np.percentile(tot_t, 10)),
                "p90_s": float(np.percentile(tot_t, 90)), "decoder_s": statistics.median(dec_t),
                "lm_head_s": statistics.median(head_t), "repeats": config.repeats, **machine, **prov,
            })
            if progress:
                print(f"  context {ctx:5d}  n_query {n:4d}  {statistics.median(tot_t) * 1e3:8.2f} ms  ({len(rows)}/{total})",
                      file=sys.stderr)
    return pd.DataFrame(rows, columns=COLUMNS)


def write_profile(df: pd.DataFrame, path: Path) -> Path:
    """Write atomically; rows of other backbones/dtypes already in the file are kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        old = load_table(path)
        keys = set(zip(df["backbone"], df["dtype"]))
        old = old[[(b, d) not in keys for b, d in zip(old["backbone"], old["dtype"])]]
        df = pd.concat([old, df], ignore_index=True)
    return write_csv(df, path)


def positive_ints(text: str, flag: str) -> tuple[int, ...]:
    vals = tuple(comma_list(text, int, flag))
    if not vals or min(vals) < 1:
        raise WorkbenchError(f"{flag}: expected positive integers, got {text!r}")
    return vals


def main(argv: Sequence[str] | None = None) -> int:
    load = load_average()  # the neighbours' load, read before ours adds to it
    d = LatencyConfig()
    p = Parser(prog="python -m bench.latency", description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--device", default="cpu")
    add_dtype(p)
    p.add_argument("--contexts", default=",".join(map(str, d.contexts)))
    p.add_argument("--n-queries", default=",".join(map(str, d.n_queries)))
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--warmup", type=int, default=d.warmup)
    add_threads(p)
    p.add_argument("--out", default=None,
                   help=f"CSV path (default {display(SCRATCH_LATENCY)}/<device>.csv; results/latency/... refreshes a committed profile)")
    args = p.parse_args(argv)
    apply_threads(args.threads)
    if args.repeats < 1:
        raise WorkbenchError("--repeats must be >= 1")
    config = LatencyConfig(positive_ints(args.contexts, "--contexts"), positive_ints(args.n_queries, "--n-queries"),
                           args.repeats, args.warmup)
    out = Path(args.out) if args.out else SCRATCH_LATENCY / f"{device_slug(args.device)}.csv"
    backbone = load_backbone(args.backbone, dtype=args.dtype, device=args.device)
    df = profile_backbone(backbone, config)
    write_profile(df, out)
    ctx = sorted(df["context"].unique())[len(df["context"].unique()) // 2]
    sub = df[df["context"] == ctx]
    print(f"wrote {display(out)}: {len(df)} rows; floor (weights/bandwidth) {df['floor_s'].iloc[0] * 1e3:.1f} ms, "
          f"bandwidth {df['mem_bandwidth_gbs'].iloc[0]:.1f} GB/s, matmul {df['matmul_gflops'].iloc[0]:.0f} GFLOP/s")
    for _, r in sub.iterrows():
        print(f"  context {int(r.context):5d}  n_query {int(r.n_query):4d}  {r.median_s * 1e3:8.2f} ms")
    warn_if_busy(load)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
