"""Read calibration tables, head accuracy, trees and validation tables under results/.

Paths relative to the results folder:

- ``calibration/<heads>/accuracy.csv`` (``head, rank0, accuracy, count``), ``paths.csv``,
  ``calibration.json``, ``validation*.csv`` (`bench.validate`); the heads' own
  ``heads/<heads>/accuracy.csv`` (``head, topk, accuracy, count``) when there is no calibration.
- ``trees/*.json`` (`trees.tree.Tree`).

A missing input raises `MissingResult` naming the command that makes it (see `analysis.load`).

    from analysis import load_calibration
    acc = load_calibration.head_accuracy("results")      # cumulative top-i accuracy, Wilson CIs
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import read_json, read_table, results_path
from common.errors import MissingResult
from common.io import display
from common.paths import DEFAULT_HEADS_NAME
from trees.acceptance_model import Marginals, PathStats, load_marginals, load_path_stats

# Columns the validation reader needs; tests check they are a subset of the writer's schema.
VALIDATION_REQUIRED = ("tree", "kind", "node_budget", "predicted_independence", "predicted_empirical",
                       "measured_accepted_length")


CALIBRATE_COMMAND = "python -m bench.calibrate"


def calibration_dir(results: str | os.PathLike | None = None, name: str | None = None) -> Path:
    """results/calibration/<name>, default the shipped heads' calibration, else the first one found."""
    root = results_path(results) / "calibration"
    if name is not None:
        d = root / name
        if not (d / "accuracy.csv").is_file():
            raise MissingResult(f"no calibration at {display(d)} (run `{CALIBRATE_COMMAND} --heads results/heads/{name}` first)")
        return d
    found = sorted(p.parent for p in root.glob("*/accuracy.csv")) if root.is_dir() else []
    if not found:
        raise MissingResult(f"no calibration under {display(root)} (run `{CALIBRATE_COMMAND}` first)")
    for d in found:
        if d.name == DEFAULT_HEADS_NAME:
            return d
    return found[0]


@dataclass(frozen=True)
class HeadAccuracy:
    """Cumulative top-i accuracy per head (heads 1-based, i = 1..R) with 95% Wilson intervals."""

    table: pd.DataFrame  # head, topk, accuracy, lo, hi, positions
    per_rank: np.ndarray  # (K, R): P(rank0 of head k == i)
    source: Path
    meta: dict[str, Any]

    @property
    def num_heads(self) -> int:
        return int(self.per_rank.shape[0])


def wilson(p: np.ndarray, n: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """95% Wilson score interval of a proportion `p` over `n` trials (NaN where n == 0)."""
    p, n = np.asarray(p, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return np.where(n > 0, centre - half, np.nan), np.where(n > 0, centre + half, np.nan)


def head_accuracy(results: str | os.PathLike | None = None, name: str | None = None) -> HeadAccuracy:
    """From the calibration accuracy table (held-out prompts), else the heads' training report."""
    try:
        cal = calibration_dir(results, name)
        path, meta = cal / "accuracy.csv", read_json(cal / "calibration.json")
    except MissingResult:
        heads_name = name or DEFAULT_HEADS_NAME
        path = results_path(results) / "heads" / heads_name / "accuracy.csv"
        if not path.is_file():
            raise MissingResult(
                f"no head accuracy table under {display(results_path(results))} (run `{CALIBRATE_COMMAND}` first)") from None
        meta = {**read_json(path.parent / "config.json"), "source": "training report (validation split)"}
    return head_accuracy_from_file(path, meta)


def head_accuracy_from_file(path: Path, meta: dict[str, Any] | None = None) -> HeadAccuracy:
    """`HeadAccuracy` of one accuracy CSV (per-rank ``head,rank0,...`` or cumulative ``head,topk,...``)."""
    m = load_marginals(path)
    cum = np.cumsum(m.accuracy, axis=1)
    rows = []
    for k in range(m.num_heads):
        n = np.full(m.top_r, m.positions[k])
        lo, hi = wilson(cum[k], n)
        for i in range(m.top_r):
            rows.append((k + 1, i + 1, cum[k, i], lo[i], hi[i], int(m.positions[k])))
    table = pd.DataFrame(rows, columns=["head", "topk", "accuracy", "lo", "hi", "positions"])
    return HeadAccuracy(table, m.accuracy, Path(path), dict(meta or {}))


def calibration_caption(meta: dict[str, Any], source: Path) -> str:
    device = meta.get("device") or "unknown device"
    dtype = meta.get("dtype") or ""
    backbone = meta.get("backbone") or "unknown model"
    heads = Path(str(meta.get("heads") or source.parent.name)).name
    extra = []
    if meta.get("prompts_done") or meta.get("prompts"):
        extra.append(f"{meta.get('prompts_done') or meta.get('prompts')} prompts")
    if meta.get("positions"):
        extra.append(f"{meta['positions']} positions")
    return (f"device: {device}{', ' + dtype if dtype else ''} | model: {backbone} + heads {heads} | "
            f"source: {display(source)}" + (f" ({', '.join(extra)})" if extra else ""))


TREE_COMMAND = "python -m trees.search --budget 64 --set-default"


def tree_file(results: str | os.PathLike | None = None, name: str | None = None) -> Path:
    """results/trees/<name>.json; default the shipped default.json, else the newest tree file."""
    root = results_path(results) / "trees"
    if name is not None:
        path = Path(name) if name.endswith(".json") else root / f"{name}.json"
        if not path.is_file():
            raise MissingResult(f"no tree file {display(path)} (run `python -m trees.search --budget 64 --name {Path(name).stem}` first)")
        return path
    if (root / "default.json").is_file():
        return root / "default.json"
    found = sorted(root.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name)) if root.is_dir() else []
    if not found:
        raise MissingResult(f"no searched tree under {display(root)} (run `{TREE_COMMAND}` first)")
    return found[-1]


def acceptance_model(results: str | os.PathLike | None = None,
                     name: str | None = None) -> tuple[PathStats | Marginals, str, Path]:
    """(model, kind, calibration dir): empirical path statistics if present, else the marginals."""
    cal = calibration_dir(results, name)
    if (cal / "paths.csv").is_file():
        return load_path_stats(cal / "paths.csv"), "empirical", cal
    return load_marginals(cal / "accuracy.csv"), "independence", cal


def validation_files(results: str | os.PathLike | None = None) -> list[Path]:
    root = results_path(results) / "calibration"
    return sorted(root.glob("*/validation*.csv")) if root.is_dir() else []


def load_validation(results: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every validated tree under results/calibration, with `calibration`, `file`, `measured` and
    `measured_by` columns: `measured` is the engine's accepted length where the tree was decoded,
    else the one replayed from the decoded prompts (`bench.validate --replay`); rows with neither
    are dropped."""
    files = validation_files(results)
    if not files:
        raise MissingResult(f"no validation table under {display(results_path(results) / 'calibration')} "
                            "(run `python -m bench.validate` first)")
    parts = []
    for f in files:
        df = read_table(f, VALIDATION_REQUIRED, "python -m bench.validate", "validation table")
        df["calibration"] = f.parent.name
        df["file"] = f.name
        parts.append(df)
    v = pd.concat(parts, ignore_index=True)
    engine = pd.to_numeric(v["measured_accepted_length"], errors="coerce")
    replayed = pd.to_numeric(v.get("replayed_accepted_length", pd.Series(np.nan, index=v.index)), errors="coerce")
    v["measured"] = engine.fillna(replayed)
    v["measured_by"] = np.where(engine.notna(), "engine", "replay")
    v = v[v["measured"].notna()].reset_index(drop=True)
    if v.empty:
        raise MissingResult(f"no measured or replayed accepted length in {', '.join(display(f) for f in files)} "
                            "(run `python -m bench.validate` with --engine or --replay)")
    return v
