"""The cost model: a device's measured verify time, read from its latency profile.

`bench.latency` measures a backbone's verify forward on a machine and writes
`results/_scratch/latency/<device>.csv` (or the committed `results/latency/<device>.csv` when told
`--out`); this module reads such a file (`load_profile`) and answers
`verify_time(n_query, context, batch)` by interpolation, which the hardware-aware tree search divides
accepted length by. Model-free: it reads tables only.

A profile may hold several batch sizes (`bench.latency --batch-sizes`): rows of batch B time one
verify forward of B rows of `n_query` tokens each, T(B, N). At batch B a step emits B times the
tokens per step in T(B, N) seconds (`batch_tokens_per_s`). Profiles written before the `batch`
column are read as batch 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import MissingResult, WorkbenchError
from common.io import display, read_csv
from common.paths import LATENCY_DIR, SCRATCH_LATENCY, committed_or_scratch
from common.provenance import device_slug, upgrade_columns

LATENCY_COMMAND = "python -m bench.latency"
REQUIRED = ("context", "n_query", "median_s", "backbone", "dtype")
BATCH = "batch"  # rows per verify forward; profiles written before batched decoding lack it (batch 1)


# The engine's modes, each with its own profile (`bench.latency --mode`).
MODES = ("eager", "compiled")


def profile_name(device: str = "cpu", mode: str = "eager") -> str:
    """File name of a profile: `<device slug>.csv` for eager, `<device slug>-<mode>.csv` otherwise."""
    if mode not in MODES:
        raise WorkbenchError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return f"{device_slug(device)}{'' if mode == 'eager' else '-' + mode}.csv"


def default_profile_path(device: str = "cpu", mode: str = "eager") -> Path:
    """This machine's profile file for `mode`: the committed results/latency/<name>, else the one a
    plain `bench.latency` wrote to results/_scratch/latency/ (<name> from `profile_name`)."""
    name = profile_name(device, mode)
    return committed_or_scratch(LATENCY_DIR / name, SCRATCH_LATENCY / name)


def load_table(path: str | os.PathLike) -> pd.DataFrame:
    """The whole latency CSV in the current schema (older provenance columns renamed, a missing batch
    column read as batch 1), checked."""
    table = upgrade_columns(read_csv(path, "latency profile", REQUIRED, command=LATENCY_COMMAND))
    if "device_name" in table.columns:
        # Profiles of the first schema wrote "AMD EPYC (1 threads)"; threads has its own column.
        table["device_name"] = table["device_name"].astype(str).str.replace(r" \(\d+ threads\)$", "", regex=True)
    return with_batch(table)


def with_batch(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with an integer `batch` column: 1 where a row has none (written before batched decoding)."""
    table = table.copy()
    if BATCH not in table.columns:
        table[BATCH] = 1
        return table
    batch = pd.to_numeric(table[BATCH], errors="coerce")
    bad = table[BATCH].notna() & ~((batch >= 1) & (batch % 1 == 0))  # a blank cell is batch 1, text is not
    if bad.any():
        raise WorkbenchError(f"latency profile: the batch column must hold positive integers, got "
                             f"{sorted(set(map(str, table.loc[bad, BATCH])))}")
    table[BATCH] = batch.fillna(1).astype(int)
    return table


def batch_tokens_per_s(tokens_per_step: float, verify_s: float, batch: int = 1) -> float:
    """Predicted throughput of a batch of `batch` rows: each verify step of `verify_s` = T(B, N)
    seconds emits `tokens_per_step` tokens in every row, so B x tokens per step / T(B, N); one row
    sees T(B, N) / tokens per step seconds per token."""
    return batch * tokens_per_step / verify_s


@dataclass(frozen=True)
class LatencyProfile:
    """Measured verify time, interpolated in query tokens and context, per batch size."""

    table: pd.DataFrame
    device: str
    backbone: str

    def __post_init__(self) -> None:
        # A table built in memory (tests, notebooks) may lack the batch column, as old files do.
        object.__setattr__(self, "table", with_batch(self.table))

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes the profile measured, ascending."""
        return tuple(sorted(int(b) for b in self.table[BATCH].unique()))

    def verify_time(self, n_query: int, context: int = 512, batch: int = 1) -> float:
        """Seconds for one verify forward of `batch` rows of `n_query` tokens after `context` cached
        tokens each, T(batch, n_query) (rows measured at that batch size only, never scaled)."""
        if n_query < 1:
            raise WorkbenchError(f"n_query must be >= 1, got {n_query}")
        table = self.table[self.table[BATCH] == batch]
        if table.empty:
            raise WorkbenchError(f"latency profile ({self.backbone}) has no rows for batch {batch} (it has batch "
                                 f"{', '.join(map(str, self.batch_sizes))}): run `{LATENCY_COMMAND} --batch-sizes {batch}`")
        contexts = sorted(table["context"].unique())
        per_ctx = [self._at_context(table, c, n_query) for c in contexts]
        if len(contexts) == 1:
            return per_ctx[0]
        return float(np.interp(context, contexts, per_ctx))

    def step_floor(self) -> float:
        """Weights-over-bandwidth floor of one forward, in seconds."""
        return float(self.table["floor_s"].iloc[0])

    @staticmethod
    def _at_context(table: pd.DataFrame, context: int, n_query: int) -> float:
        sub = table[table["context"] == context].sort_values("n_query")
        ns, ts = sub["n_query"].to_numpy(float), sub["median_s"].to_numpy(float)
        if n_query > ns[-1] and len(ns) >= 2:  # linear extrapolation past the last measurement
            slope = (ts[-1] - ts[-2]) / (ns[-1] - ns[-2])
            return float(ts[-1] + slope * (n_query - ns[-1]))
        return float(np.interp(n_query, ns, ts))


def load_profile(path: str | os.PathLike | None = None, backbone: str | None = None,
                 dtype: str | None = None, mode: str = "eager") -> LatencyProfile:
    """Read a latency CSV (default: this machine's for `mode`), optionally for one backbone and dtype;
    the profile keeps every batch size measured for that backbone and dtype."""
    if path is None:
        path = default_profile_path(mode=mode)
        if not path.is_file():
            # The default names this machine and its thread count: say what exists instead.
            found = sorted(p.name for p in LATENCY_DIR.glob("*.csv"))
            how = LATENCY_COMMAND + ("" if mode == "eager" else f" --mode {mode}")
            raise MissingResult(f"no latency profile for this machine ({path.stem}): run `{how}` here, "
                                f"or pass --latency FILE (committed: {', '.join(found) or 'none'} in {display(LATENCY_DIR)})")
    table = load_table(path)
    if backbone is not None:
        table = table[table["backbone"] == backbone]
    if dtype is not None:
        table = table[table["dtype"] == dtype]
    if table.empty:
        raise WorkbenchError(f"latency profile {path} has no rows for backbone={backbone} dtype={dtype}")
    # Several backbones/dtypes in one file: take the first unless asked.
    first = table.iloc[0]
    table = table[(table["backbone"] == first["backbone"]) & (table["dtype"] == first["dtype"])]
    return LatencyProfile(table=table.reset_index(drop=True), device=str(first.get("device_name", "")),
                          backbone=str(first["backbone"]))
