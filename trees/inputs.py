"""Which tables a tree search reads: the calibration of a heads folder, fitted into acceptance models.

A search needs the heads' marginal rank accuracies (always), the path statistics of the empirical
model and the ranks table of the replay model (both when calibrated). `resolve_accuracy` finds
them: for a heads folder `results/heads/<name>` (default: the shipped heads) it reads
`results/calibration/<name>/accuracy.csv` with `paths.csv` and `ranks.parquet` (or `ranks.csv`)
beside it, as written by `python -m bench.calibrate` (the committed calibration; for heads without
one, the calibration a plain `bench.calibrate` wrote to `results/_scratch/calibration/<name>/`); without a calibration it falls back to the
heads' own cumulative top-k table (`<heads>/accuracy.csv`, written by `medusa.train`), which only
supports the independence model. An explicit accuracy file or DataFrame overrides all that.

Usage::

    from trees.inputs import resolve_accuracy
    inputs = resolve_accuracy()                                   # the shipped heads' calibration
    inputs = resolve_accuracy(heads="results/heads/mine")         # another heads folder's
    inputs = resolve_accuracy("results/calibration/mine/accuracy.csv")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import common.paths as repo
from common.errors import MissingResult
from common.io import display, one_of
from trees.acceptance_model import (
    CALIBRATE_COMMAND,
    Marginals,
    PathStats,
    ReplayModel,
    load_marginals,
    load_path_stats,
    load_ranks,
    marginals_from_frame,
    marginals_from_ranks,
    path_stats_from_ranks,
    replay_model_from_ranks,
)

RANKS_FILES = ("ranks.parquet", "ranks.csv")

TableInput = str | os.PathLike | pd.DataFrame


@dataclass(frozen=True)
class AccuracyInputs:
    """The fitted models a search reads: marginals always, path statistics and replay when available."""

    marginals: Marginals
    stats: PathStats | None
    source: str
    calibration_dir: Path | None = None
    replay: ReplayModel | None = None


def heads_name(heads: str | os.PathLike | None = None) -> str:
    """The name of a heads folder (its last component); None = the shipped heads."""
    return Path(heads).name if heads is not None else repo.DEFAULT_HEADS_NAME


def default_accuracy_file(heads: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """(accuracy table, calibration folder or None) for a heads folder (None = the shipped heads).

    The calibration's per-rank table when it exists, else the heads' own cumulative table; raises
    `MissingResult` naming the commands that make them when neither exists.
    """
    name = heads_name(heads)
    cal_dir = repo.committed_or_scratch(repo.calibration_dir(name), repo.scratch_calibration_dir(name))
    if (cal_dir / "accuracy.csv").is_file():
        return cal_dir / "accuracy.csv", cal_dir
    heads_dir = Path(heads) if heads is not None else repo.HEADS_ROOT / name
    if (heads_dir / "accuracy.csv").is_file():
        return heads_dir / "accuracy.csv", None
    calibrate = CALIBRATE_COMMAND + (f" --heads {display(heads_dir)}" if heads is not None else "")
    raise MissingResult(
        f"no accuracy table: neither {display(cal_dir / 'accuracy.csv')} nor {display(heads_dir / 'accuracy.csv')} "
        f"exists (train heads with `python -m medusa.train`, then run `{calibrate}`), or pass --accuracy FILE"
    )


def _from_ranks(ranks: TableInput) -> tuple[pd.DataFrame, PathStats, ReplayModel]:
    ranks_df = ranks if isinstance(ranks, pd.DataFrame) else load_ranks(ranks)
    return ranks_df, path_stats_from_ranks(ranks_df, source="ranks"), replay_model_from_ranks(ranks_df, source="ranks")


def _beside(cal_dir: Path, stats: PathStats | None, replay: ReplayModel | None) -> tuple[PathStats | None, ReplayModel | None]:
    """Fill in the path statistics and replay model from the files of a calibration folder."""
    if stats is None and (cal_dir / "paths.csv").is_file():
        stats = load_path_stats(cal_dir / "paths.csv")
    ranks = one_of(cal_dir, RANKS_FILES)
    if replay is None and ranks.is_file():
        replay = replay_model_from_ranks(load_ranks(ranks), source=display(ranks))
    return stats, replay


def resolve_accuracy(
    accuracy: TableInput | Marginals | None = None,
    paths: TableInput | PathStats | None = None,
    ranks: TableInput | None = None,
    heads: str | os.PathLike | None = None,
) -> AccuracyInputs:
    """Load the marginals and (when present) the path statistics and replay model a search needs.

    `accuracy=None`: the calibration of `heads` (a heads folder; None = the shipped heads), else
    those heads' cumulative table. A path: an accuracy CSV; `paths.csv` and the ranks table beside
    it feed the empirical and replay models. A DataFrame or `Marginals`: an accuracy table; give
    `paths` (paths CSV, DataFrame or `PathStats`) or `ranks` (ranks table) for the other models.
    """
    stats: PathStats | None = None
    replay: ReplayModel | None = None
    if ranks is not None:
        ranks_df, stats, replay = _from_ranks(ranks)
        if accuracy is None:
            return AccuracyInputs(marginals_from_ranks(ranks_df, stats.top_r, "ranks"), stats, "ranks", None, replay)
    if isinstance(paths, PathStats):
        stats = paths
    elif paths is not None:
        stats = load_path_stats(paths)
    if isinstance(accuracy, Marginals):
        return AccuracyInputs(accuracy, stats, accuracy.source, None, replay)
    if isinstance(accuracy, pd.DataFrame):
        return AccuracyInputs(marginals_from_frame(accuracy, "(DataFrame)"), stats, "(DataFrame)", None, replay)
    if accuracy is None:
        acc_file, cal_dir = default_accuracy_file(heads)
    else:
        acc_file = Path(accuracy)
        cal_dir = acc_file.parent
    marginals = load_marginals(acc_file)
    if cal_dir is not None:
        stats, replay = _beside(cal_dir, stats, replay)
    return AccuracyInputs(marginals, stats, display(acc_file), cal_dir, replay)
