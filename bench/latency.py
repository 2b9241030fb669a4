"""Latency profile of a backbone: verify-forward time by query tokens and context, per device.

A tree is only as good as the verify cost it pays. This measures, on the machine at hand, the time
of one engine verification forward (decoder with a 4D tree-style mask over a static KV cache, plus
the LM head on the query tokens) for n = 1, 2, 4, ..., 256 query tokens after contexts of
128/512/1024 tokens: the median of repeats after warm-up. It also measures the machine's memory
read bandwidth and matrix throughput, so the weights-over-bandwidth floor can be drawn beside it.

    python -m bench.latency                      # SmolLM2 on this CPU -> results/latency/<device>.csv
    python -m bench.latency --device cuda --dtype bfloat16 --contexts 128,512,1024

The tree search reads the CSV through `load_profile(...).verify_time(n_query, context)`.

CSV columns (one row per context x n_query): device_slug, device, backbone, dtype, threads,
context, n_query, median_s, p10_s, p90_s, decoder_s, lm_head_s, repeats, weight_bytes,
mem_bandwidth_gbs, matmul_gflops, floor_s (weights / bandwidth), commit, date, torch, transformers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.provenance import REPO_ROOT, device_slug, provenance
from medusa.backbone import DEFAULT_BACKBONE, Backbone, load_backbone
from medusa.decode import cache_kwarg
from medusa.errors import WorkbenchError, run_cli
from medusa.kv_cache import StaticKV
from medusa.tree_attention import causal_mask

LATENCY_DIR = REPO_ROOT / "results" / "latency"
COLUMNS = [
    "device_slug", "device", "backbone", "dtype", "threads", "context", "n_query", "median_s", "p10_s",
    "p90_s", "decoder_s", "lm_head_s", "repeats", "weight_bytes", "mem_bandwidth_gbs", "matmul_gflops",
    "floor_s", "commit", "date", "torch", "transformers",
]


@dataclass(frozen=True)
class LatencyConfig:
    contexts: tuple[int, ...] = (128, 512, 1024)
    n_queries: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    repeats: int = 7
    warmup: int = 2


def default_profile_path(device: str = "cpu") -> Path:
    """This machine's profile file: results/latency/<device slug>.csv."""
    return LATENCY_DIR / f"{device_slug(device)}.csv"


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


@torch.inference_mode()
def profile_backbone(backbone: Backbone, config: LatencyConfig, progress: bool = True) -> pd.DataFrame:
    """Measure verify-forward times; returns the tidy table (see module docstring)."""
    model, device, dtype = backbone.model, backbone.device, backbone.dtype
    decoder, lm_head = model.base_model, model.get_output_embeddings()
    arg = cache_kwarg(decoder)
    max_ctx = max(config.contexts) + max(config.n_queries)
    if max_ctx > backbone.max_positions:
        raise WorkbenchError(f"context {max(config.contexts)} + {max(config.n_queries)} queries exceeds the model's {backbone.max_positions} positions")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = measure_bandwidth(device)
    gflops = measure_matmul(device, dtype)
    prov = provenance(str(device), dtype)
    gen = torch.Generator().manual_seed(0)
    rows = []
    total = len(config.contexts) * len(config.n_queries)
    done = 0
    for ctx in config.contexts:
        cache = StaticKV(int(model.config.num_hidden_layers), ctx + max(config.n_queries))
        prompt = torch.randint(0, backbone.vocab_size, (1, ctx), generator=gen).to(device)
        decoder(input_ids=prompt, position_ids=torch.arange(ctx, device=device)[None],
                attention_mask=causal_mask(ctx, ctx, dtype, device), use_cache=True, **{arg: cache.hf_cache})
        cache.advance(ctx)
        for n in config.n_queries:
            ids = torch.randint(0, backbone.vocab_size, (1, n), generator=gen).to(device)
            pos = torch.arange(ctx, ctx + n, device=device)[None]
            # A causal block stands in for the tree mask: same shape, same cost.
            mask = causal_mask(n, n, dtype, device)
            full = torch.zeros(1, 1, n, ctx + n, dtype=dtype, device=device)
            full[..., ctx:] = mask
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
            rows.append({
                "device_slug": device_slug(str(device)),
                "device": prov["device"],
                "backbone": backbone.name,
                "dtype": prov["dtype"],
                "threads": prov["threads"],
                "context": ctx,
                "n_query": n,
                "median_s": statistics.median(tot_t),
                "p10_s": float(np.percentile(tot_t, 10)),
                "p90_s": float(np.percentile(tot_t, 90)),
                "decoder_s": statistics.median(dec_t),
                "lm_head_s": statistics.median(head_t),
                "repeats": config.repeats,
                "weight_bytes": weight_bytes,
                "mem_bandwidth_gbs": bandwidth,
                "matmul_gflops": gflops,
                "floor_s": weight_bytes / (bandwidth * 1e9),
                "commit": prov["commit"],
                "date": prov["date"],
                "torch": prov["torch"],
                "transformers": prov["transformers"],
            })
            done += 1
            if progress:
                print(f"  context {ctx:5d}  n_query {n:4d}  {statistics.median(tot_t) * 1e3:8.2f} ms  ({done}/{total})",
                      file=sys.stderr)
    return pd.DataFrame(rows, columns=COLUMNS)


def write_profile(df: pd.DataFrame, path: Path) -> Path:
    """Write atomically; rows of other backbones/dtypes already in the file are kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        old = pd.read_csv(path)
        keys = set(zip(df["backbone"], df["dtype"]))
        old = old[[(b, d) not in keys for b, d in zip(old["backbone"], old["dtype"])]]
        df = pd.concat([old, df], ignore_index=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        df.to_csv(f, index=False)
    os.replace(f.name, path)
    return path


@dataclass(frozen=True)
class LatencyProfile:
    """Measured verify time, interpolated in query tokens and context."""

    table: pd.DataFrame
    device: str
    backbone: str

    def verify_time(self, n_query: int, context: int = 512) -> float:
        """Seconds for one verify forward of `n_query` tokens after `context` cached tokens."""
        if n_query < 1:
            raise WorkbenchError(f"n_query must be >= 1, got {n_query}")
        contexts = sorted(self.table["context"].unique())
        per_ctx = [self._at_context(c, n_query) for c in contexts]
        if len(contexts) == 1:
            return per_ctx[0]
        return float(np.interp(context, contexts, per_ctx))

    def step_floor(self) -> float:
        """Weights-over-bandwidth floor of one forward, in seconds."""
        return float(self.table["floor_s"].iloc[0])

    def _at_context(self, context: int, n_query: int) -> float:
        sub = self.table[self.table["context"] == context].sort_values("n_query")
        ns, ts = sub["n_query"].to_numpy(float), sub["median_s"].to_numpy(float)
        if n_query > ns[-1] and len(ns) >= 2:  # linear extrapolation past the last measurement
            slope = (ts[-1] - ts[-2]) / (ns[-1] - ns[-2])
            return float(ts[-1] + slope * (n_query - ns[-1]))
        return float(np.interp(n_query, ns, ts))


def load_profile(path: str | os.PathLike | None = None, backbone: str | None = None,
                 dtype: str | None = None) -> LatencyProfile:
    """Read a latency CSV (default: this machine's), optionally for one backbone and dtype."""
    path = Path(path) if path is not None else default_profile_path()
    if not path.is_file():
        raise WorkbenchError(f"no latency profile at {path} (run `python -m bench.latency` on this machine first)")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise WorkbenchError(f"latency profile {path} is malformed: {e}") from None
    missing = {"context", "n_query", "median_s", "backbone", "dtype"} - set(table.columns)
    if missing:
        raise WorkbenchError(f"latency profile {path} lacks columns {sorted(missing)}")
    if backbone is not None:
        table = table[table["backbone"] == backbone]
    if dtype is not None:
        table = table[table["dtype"] == dtype]
    if table.empty:
        raise WorkbenchError(f"latency profile {path} has no rows for backbone={backbone} dtype={dtype}")
    # Several backbones/dtypes in one file: take the first unless asked.
    first = table.iloc[0]
    table = table[(table["backbone"] == first["backbone"]) & (table["dtype"] == first["dtype"])]
    return LatencyProfile(table=table.reset_index(drop=True), device=str(first.get("device", "")),
                          backbone=str(first["backbone"]))


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise WorkbenchError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise WorkbenchError(f"expected positive integers, got {text!r}")
    return vals


def main(argv: Sequence[str] | None = None) -> int:
    d = LatencyConfig()
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--contexts", default=",".join(map(str, d.contexts)))
    p.add_argument("--n-queries", default=",".join(map(str, d.n_queries)))
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's setting)")
    p.add_argument("--out", default=None, help="CSV path (default results/latency/<device>.csv)")
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise WorkbenchError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        raise WorkbenchError("--repeats must be >= 1")
    config = LatencyConfig(_ints(args.contexts), _ints(args.n_queries), args.repeats, args.warmup)
    out = Path(args.out) if args.out else default_profile_path(args.device)
    backbone = load_backbone(args.backbone, dtype=args.dtype, device=args.device)
    df = profile_backbone(backbone, config)
    write_profile(df, out)
    ctx = sorted(df["context"].unique())[len(df["context"].unique()) // 2]
    sub = df[df["context"] == ctx]
    print(f"wrote {out}: {len(df)} rows; floor (weights/bandwidth) {df['floor_s'].iloc[0] * 1e3:.1f} ms, "
          f"bandwidth {df['mem_bandwidth_gbs'].iloc[0]:.1f} GB/s, matmul {df['matmul_gflops'].iloc[0]:.0f} GFLOP/s")
    for _, r in sub.iterrows():
        print(f"  context {int(r.context):5d}  n_query {int(r.n_query):4d}  {r.median_s * 1e3:8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
