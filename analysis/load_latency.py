"""Read the latency profiles under results/latency (`bench.latency` writes them, one per device).

Older profiles (provenance columns device/torch/transformers) are read in the current schema by
`trees.cost.load_table`. A missing profile raises `MissingResult` naming `python -m bench.latency`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from analysis.load import results_path
from common.errors import MissingResult, WorkbenchError
from common.io import display
from trees.cost import load_table

# Columns the reader needs; tests check they are a subset of `bench.latency.COLUMNS`.
LATENCY_REQUIRED = ("device_name", "backbone", "dtype", "context", "n_query", "median_s", "p10_s", "p90_s",
                    "weight_bytes", "mem_bandwidth_gbs", "matmul_gflops", "floor_s")


def latency_files(results: str | os.PathLike | None = None) -> list[Path]:
    root = results_path(results) / "latency"
    files = sorted(root.glob("*.csv")) if root.is_dir() else []
    if not files:
        raise MissingResult(f"no latency profile under {display(root)} (run `python -m bench.latency` first)")
    return files


def load_latency(path: Path, batch: int | None = 1) -> pd.DataFrame:
    """A latency profile's rows of one batch size (default 1, what the latency figure and table show;
    None: every batch size, the `batch` column telling them apart)."""
    table = load_table(path)
    missing = [c for c in LATENCY_REQUIRED if c not in table.columns]
    if missing:
        raise WorkbenchError(f"latency profile {display(path)} lacks columns {missing}")
    if batch is None:
        return table
    table = table[table["batch"] == batch]
    if table.empty:
        raise WorkbenchError(f"latency profile {display(path)} has no rows of batch size {batch}")
    return table
