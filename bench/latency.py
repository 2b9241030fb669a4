"""Latency profile of a backbone: verify-forward time by query tokens and context, per device and mode.

A tree is only as good as the verify cost it pays. This measures, on the machine at hand, the time
of one engine verification forward (decoder with a 4D tree-style mask over a static KV cache, plus
the LM head) for n = 1, 2, 3, ..., 64 query tokens after contexts of 128/512/1024 tokens: the
median of repeats after warm-up. It also measures the machine's memory read bandwidth and matrix
throughput, so the weights-over-bandwidth floor can be drawn beside it.

Batch sizes (`--batch-sizes 1,2,4,8`, eager only): at batch B one forward verifies B rows of n
tokens each, as batched decoding does (`medusa.batch`): input ids and positions (B, n), a mask
(B, 1, n, W) over a static `BatchKV` whose B rows each hold the same `ctx` prefilled tokens, the LM
head on all B x n rows. Each row of the CSV is T(B, n) for one forward of the whole batch, the
`batch` column saying B; batch 1 is timed exactly as without the option (a one-request `StaticKV`),
so profiles measured before it stay comparable.

Two modes, one CSV each (`<device>.csv` and `<device>-compiled.csv`):
- ``eager``: the engine's eager verify (`medusa.decode.verify_function`), the LM head on every row.
- ``compiled``: the same function compiled as the engine compiles it (`medusa.compiled`: inductor
  freezing + C++ GEMM on CPU, CUDA graphs on GPU), over a full-width cache of `--bucket` slots
  (what `DecodeConfig.compile_bucket` gives), the LM head on min(n, 16) rows
  (`medusa.decode.ALL_ROWS_MAX_NODES`, as the engine does). Each shape compiles once; its compile
  time is the `compile_s` column (cold: first process on this machine; warm: inductor's on-disk
  caches already hold it).

    python -m bench.latency                      # SmolLM2 on this CPU -> results/_scratch/latency/<device>.csv
    python -m bench.latency --mode compiled --contexts 384   # -> results/_scratch/latency/<device>-compiled.csv
    python -m bench.latency --device cuda --dtype bfloat16 --contexts 128,512,1024
    python -m bench.latency --device cuda --dtype bfloat16 --batch-sizes 1,2,4,8,16   # T(B, n) per batch size
    python -m bench.latency --threads 1 --out results/latency/cpu-amd-epyc-1t.csv   # refresh the committed one

A plain run writes the git-ignored scratch file, never the committed profile under results/latency/
(`make latency` names that one). The tree search reads the CSV through
`trees.cost.load_profile(...).verify_time(n_query, context, batch)`: by default the committed profile of
this device, else the scratch one. Timings are only as good as the machine is idle: a `warning:`
line says when the load average shows other processes on the cores.

CSV columns (one row per context x batch x n_query): device_slug, backbone, batch (rows per
forward), context, n_query (per row), median_s, p10_s, p90_s, decoder_s, lm_head_s (eager mode; NaN
compiled, where the two run as one graph), repeats, weight_bytes, mem_bandwidth_gbs, matmul_gflops,
floor_s (weights / bandwidth), compute_floor_s (the forward's matmul FLOPs over all rows /
matmul_gflops), roofline_s (the larger floor), mode, lm_rows (LM-head rows per batch row),
compile_s, load_start, load_end (1-minute load average around the measurement), then the provenance columns of `common.provenance.Provenance`
(commit, date, device_name, torch_version, transformers_version, threads, dtype). Profiles written
before that schema (columns device, torch, transformers) are read through `upgrade_columns`, and
profiles without a batch column as batch 1 (`trees.cost.load_table`); rewriting a file replaces the
rows of the same backbone, dtype and batch size and keeps the others.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from medusa.compiled import Compiled
from medusa.decode import ALL_ROWS_MAX_NODES, cache_kwarg, verify_function
from medusa.kv_cache import BatchKV, StaticKV
from medusa.tree_attention import causal_mask
from trees.cost import MODES, load_table, profile_name

MEASURED_COLUMNS = [
    "device_slug", "backbone", "batch", "context", "n_query", "median_s", "p10_s", "p90_s", "decoder_s", "lm_head_s",
    "repeats", "weight_bytes", "mem_bandwidth_gbs", "matmul_gflops", "floor_s", "compute_floor_s", "roofline_s",
    "mode", "lm_rows", "compile_s", "load_start", "load_end",
]

COLUMNS = MEASURED_COLUMNS + list(PROVENANCE_COLUMNS)


@dataclass(frozen=True)
class LatencyConfig:
    contexts: tuple[int, ...] = (128, 512, 1024)
    n_queries: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64)
    repeats: int = 7
    warmup: int = 2
    mode: str = "eager"
    bucket: int = 512  # compiled mode: cache slots every forward attends over (DecodeConfig.compile_bucket)
    batch_sizes: tuple[int, ...] = (1,)  # rows per verify forward (batched decoding), eager mode beyond 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise WorkbenchError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.batch_sizes or min(self.batch_sizes) < 1 or len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise WorkbenchError(f"--batch-sizes: expected distinct positive integers, got {list(self.batch_sizes)}")
        if self.mode == "compiled" and max(self.batch_sizes) > 1:
            raise WorkbenchError(f"compiled mode times batch 1 only (the compiled verify is not batched), got "
                                 f"--batch-sizes {','.join(map(str, self.batch_sizes))}: use --mode eager")
        if self.mode == "compiled" and max(self.contexts) + max(self.n_queries) > self.bucket:
            raise WorkbenchError(f"compiled mode: context {max(self.contexts)} + {max(self.n_queries)} queries "
                                 f"exceeds the cache bucket of {self.bucket} slots (--bucket)")


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


def _reset(cache: StaticKV | BatchKV, ctx: int, device: torch.device) -> None:
    """Back to `ctx` committed tokens in every row: a verify wrote past them and keeps none."""
    if isinstance(cache, BatchKV):
        cache.keep([ctx] * cache.rows, cache.tree_start(), [torch.arange(0, device=device)] * cache.rows)
    else:
        cache.keep(ctx, torch.arange(0, device=device))


def _time_verify(backbone: Backbone, verify: Any, cache: StaticKV | BatchKV, ctx: int, n: int, rows: int,
                 config: LatencyConfig, gen: torch.Generator, split: bool) -> tuple[list[float], float, float, float]:
    """Repeated n-token verify forwards after `ctx` cached tokens: (times, first call's time, median
    decoder time, median LM-head time). With `split` (eager) the forward is `verify`'s two parts
    called one after the other, each timed; without (compiled: one graph) the parts are NaN.
    A `BatchKV` of B rows (eager) makes it one forward of B rows of n tokens each, the LM head on
    `rows` hidden states of every row, as `medusa.batch` verifies."""
    device, dtype = backbone.device, backbone.dtype
    decoder, lm_head = backbone.model.base_model, backbone.model.get_output_embeddings()
    batch = cache.rows if isinstance(cache, BatchKV) else 1
    width = cache.width + n if isinstance(cache, BatchKV) else cache.mask_width(n)
    ids = torch.randint(0, backbone.vocab_size, (batch, n), generator=gen).to(device)
    pos = torch.arange(ctx, ctx + n, device=device)[None].repeat(batch, 1)
    # A causal block stands in for the tree mask: same shape, same cost.
    mask = torch.full((1, 1, n, width), torch.finfo(dtype).min, dtype=dtype, device=device)
    mask[..., :ctx] = 0.0
    mask[..., ctx: ctx + n] = causal_mask(n, n, dtype, device)
    mask = mask.repeat(batch, 1, 1, 1)  # (B, 1, n, W): batched decoding builds one mask per row
    row_ids = torch.arange(rows, device=device)
    times, dec_t, head_t, first = [], [], [], float("nan")
    for r in range(config.warmup + config.repeats + 1):
        _reset(cache, ctx, device)
        _sync(device)
        t0 = time.perf_counter()
        if split:
            h = decoder(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=True,
                        **{cache_kwarg(decoder): cache.hf_cache}).last_hidden_state
            _sync(device)
            t1 = time.perf_counter()
            lm_head(h[:, row_ids])
        else:
            verify(ids, pos, mask, cache.hf_cache, row_ids)
        _sync(device)
        t2 = time.perf_counter()
        if r == 0:
            first = t2 - t0
        elif r > config.warmup:
            times.append(t2 - t0)
            if split:
                dec_t.append(t1 - t0)
                head_t.append(t2 - t1)
    _reset(cache, ctx, device)
    if not split:
        return times, first, float("nan"), float("nan")
    return times, first, statistics.median(dec_t), statistics.median(head_t)


def _prefill_context(backbone: Backbone, ctx: int, capacity: int, full_width: bool, gen: torch.Generator) -> StaticKV:
    """A static cache holding `ctx` random prompt tokens."""
    model, device = backbone.model, backbone.device
    cache = StaticKV(int(model.config.num_hidden_layers), capacity, full_width=full_width, device=device)
    prompt = torch.randint(0, backbone.vocab_size, (1, ctx), generator=gen).to(device)
    model.base_model(input_ids=prompt, position_ids=torch.arange(ctx, device=device)[None],
                     attention_mask=causal_mask(ctx, cache.mask_width(ctx), backbone.dtype, device), use_cache=True,
                     **{cache_kwarg(model.base_model): cache.hf_cache})
    cache.advance(ctx)
    return cache


def _batch_cache(backbone: Backbone, single: StaticKV, batch: int) -> BatchKV:
    """A static batch cache of `batch` rows, each a copy of `single`'s prefilled context (joined as
    the batch engine joins prefilled requests)."""
    cache = BatchKV("static", int(backbone.model.config.num_hidden_layers), single.capacity, backbone.device)
    for _ in range(batch):
        cache.join(single)
    return cache


def forward_flops(backbone: Backbone, n: int, lm_rows: int) -> float:
    """Matmul FLOPs of one n-token forward: 2 x (body weights x n + LM-head weights x lm_rows)."""
    lm_head = backbone.model.get_output_embeddings()
    lm_params = lm_head.weight.numel()
    embed = backbone.model.get_input_embeddings().weight
    body = sum(p.numel() for p in backbone.model.parameters()) - lm_params
    if embed.data_ptr() != lm_head.weight.data_ptr():
        body -= embed.numel()  # a lookup, not a matmul
    return 2.0 * (body * n + lm_params * lm_rows)


@torch.inference_mode()
def profile_backbone(backbone: Backbone, config: LatencyConfig, progress: bool = True) -> pd.DataFrame:
    """Measure verify-forward times, per context, batch size and query tokens; returns the tidy
    table (see module docstring)."""
    device = backbone.device
    compiled = config.mode == "compiled"
    if max(config.contexts) + max(config.n_queries) > backbone.max_positions:
        raise WorkbenchError(f"context {max(config.contexts)} + {max(config.n_queries)} queries exceeds the model's {backbone.max_positions} positions")
    weight_bytes = sum(p.numel() * p.element_size() for p in backbone.model.parameters())
    bandwidth = measure_bandwidth(device)
    matmul = measure_matmul(device, backbone.dtype)
    machine = {"weight_bytes": weight_bytes, "mem_bandwidth_gbs": bandwidth, "matmul_gflops": matmul,
               "floor_s": weight_bytes / (bandwidth * 1e9), "mode": config.mode, "repeats": config.repeats}
    prov = Provenance.collect(str(device), backbone.dtype).as_dict()
    verify = None  # eager: `_time_verify` calls the two parts of `verify_function` itself, to time each
    if compiled:
        verify = backbone.compiled("verify", lambda: Compiled(verify_function(backbone), "verify", device))
    gen = torch.Generator().manual_seed(0)
    rows = []
    total = len(config.contexts) * len(config.batch_sizes) * len(config.n_queries)
    for ctx in config.contexts:
        capacity = config.bucket if compiled else ctx + max(config.n_queries)
        single = _prefill_context(backbone, ctx, capacity, compiled, gen)
        for batch in config.batch_sizes:
            cache = single if batch == 1 else _batch_cache(backbone, single, batch)
            for n in config.n_queries:
                lm_rows = min(n, ALL_ROWS_MAX_NODES) if compiled else n
                load_start = load_average()
                times, first, dec_s, head_s = _time_verify(backbone, verify, cache, ctx, n, lm_rows, config, gen,
                                                            split=not compiled)
                median = statistics.median(times)
                compute_floor = batch * forward_flops(backbone, n, lm_rows) / (matmul * 1e9)
                rows.append({
                    "device_slug": device_slug(str(device)), "backbone": backbone.name, "batch": batch,
                    "context": ctx, "n_query": n, "median_s": median, "p10_s": float(np.percentile(times, 10)),
                    "p90_s": float(np.percentile(times, 90)), "decoder_s": dec_s, "lm_head_s": head_s,
                    "compute_floor_s": compute_floor, "roofline_s": max(compute_floor, machine["floor_s"]),
                    "lm_rows": lm_rows, "compile_s": max(first - median, 0.0) if compiled else float("nan"),
                    "load_start": load_start, "load_end": load_average(), **machine, **prov,
                })
                if progress:
                    extra = f"  (first call {first:.1f} s)" if compiled else ""
                    print(f"  {config.mode} context {ctx:5d}  batch {batch:3d}  n_query {n:4d}  {median * 1e3:8.2f} ms"
                          f"{extra}  ({len(rows)}/{total})", file=sys.stderr)
            del cache  # a batch cache holds B copies of the context: free it before the next one
    return pd.DataFrame(rows, columns=COLUMNS)


def write_profile(df: pd.DataFrame, path: Path) -> Path:
    """Write atomically; rows of other (backbone, dtype, batch) already in the file are kept, so a
    run at other batch sizes adds to the batch-1 rows instead of replacing them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        old = load_table(path)  # a file written before the batch column reads as batch 1
        keys = set(zip(df["backbone"], df["dtype"], df["batch"].astype(int)))
        old = old[[k not in keys for k in zip(old["backbone"], old["dtype"], old["batch"].astype(int))]]
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
    p.add_argument("--mode", default=d.mode, choices=MODES,
                   help="eager, or compiled as the engine compiles its verify (one CSV per mode)")
    p.add_argument("--bucket", type=int, default=d.bucket, help="compiled mode: cache slots (DecodeConfig.compile_bucket)")
    p.add_argument("--batch-sizes", default=",".join(map(str, d.batch_sizes)),
                   help="rows per verify forward, e.g. 1,2,4,8,16 (eager mode only beyond 1; one row set per size)")
    add_threads(p)
    p.add_argument("--out", default=None,
                   help=f"CSV path (default {display(SCRATCH_LATENCY)}/<device>.csv; results/latency/... refreshes a committed profile)")
    args = p.parse_args(argv)
    apply_threads(args.threads)
    if args.repeats < 1:
        raise WorkbenchError("--repeats must be >= 1")
    config = LatencyConfig(positive_ints(args.contexts, "--contexts"), positive_ints(args.n_queries, "--n-queries"),
                           args.repeats, args.warmup, args.mode, args.bucket,
                           batch_sizes=positive_ints(args.batch_sizes, "--batch-sizes"))
    out = Path(args.out) if args.out else SCRATCH_LATENCY / profile_name(args.device, args.mode)
    backbone = load_backbone(args.backbone, dtype=args.dtype, device=args.device)
    df = profile_backbone(backbone, config)
    write_profile(df, out)
    ctx = sorted(df["context"].unique())[len(df["context"].unique()) // 2]
    print(f"wrote {display(out)}: {len(df)} rows ({config.mode}); floor (weights/bandwidth) {df['floor_s'].iloc[0] * 1e3:.1f} ms, "
          f"bandwidth {df['mem_bandwidth_gbs'].iloc[0]:.1f} GB/s, matmul {df['matmul_gflops'].iloc[0]:.0f} GFLOP/s")
    for batch in config.batch_sizes:
        sub = df[(df["context"] == ctx) & (df["batch"] == batch)]
        t1 = float(sub["median_s"].iloc[0])
        for _, r in sub.iterrows():
            print(f"  context {int(r.context):5d}  batch {batch:3d}  n_query {int(r.n_query):4d}  {r.median_s * 1e3:8.2f} ms  "
                  f"T(n)/T({int(sub['n_query'].iloc[0])}) {r.median_s / t1:5.2f}  roofline {r.roofline_s * 1e3:7.2f} ms")
    warn_if_busy(load)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
