"""Held-out evaluation of the acceptance models: fit on some calibration prompts, predict the others.

The three models of `trees.acceptance_model` (independence, empirical, replay) are fitted on all
folds of the calibration prompts but one and scored on the held-out fold against what the greedy
engine gets there (replayed from the held-out ranks, exact for greedy acceptance). When no trees
are given, the greedy and empirical-optimal trees are searched on the fitting folds
(`trees.best_first`), so the empirical model pays for its own selection. `bench.calibrate` writes
the result as ``holdout.csv`` beside the calibration tables.

Usage::

    from trees.acceptance_model import load_ranks
    from trees.holdout import holdout_evaluation, summarize_holdout
    table = holdout_evaluation(load_ranks("results/calibration/smollm2-135m-medusa1/ranks.parquet"))
    summarize_holdout(table)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pandas as pd

from common.errors import WorkbenchError
from trees.acceptance_model import (
    MODELS,
    check_ranks,
    expected_tokens,
    marginals_from_ranks,
    path_stats_from_ranks,
    replay_model_from_ranks,
)
from trees.best_first import search_tree
from trees.tree import Tree


def prompt_fold(prompt: str, folds: int, salt: str = "holdout") -> int:
    """Fold (0..folds-1) of a calibration prompt: a deterministic hash of its name."""
    return int(hashlib.sha256(f"{salt}:{prompt}".encode()).hexdigest()[:8], 16) % folds


HOLDOUT_COLUMNS = [
    "tree", "node_budget", "fold", "test_positions", "test_steps", "predicted_independence",
    "predicted_empirical", "predicted_replay", "actual", "actual_per_position",
    "error_independence", "error_empirical", "error_replay",
]


def holdout_evaluation(
    ranks: pd.DataFrame,
    trees: Sequence[Tree] | None = None,
    budgets: Sequence[int] = (8, 16, 32, 64, 128),
    top_r: int | None = None,
    folds: int = 5,
) -> pd.DataFrame:
    """Cross-validate the models by prompt: fit on all folds but one, predict the held-out fold.

    `actual` is what the greedy engine gets per step on the held-out prompts (replayed from their
    ranks, exact for greedy acceptance); `actual_per_position` is their per-position mean (what
    the two additive models estimate). When `trees` is None, the greedy (independence-optimal) and
    empirical-optimal trees searched on the fitting folds are scored at each budget, so the
    empirical model pays for its own selection. One row per (tree, fold), columns HOLDOUT_COLUMNS
    (errors relative to `actual`, signed); `summarize_holdout` pools the folds.
    """
    check_ranks(ranks)
    if folds < 2:
        raise WorkbenchError(f"held-out evaluation needs at least 2 folds, got {folds}")
    top_r = int(top_r if top_r is not None else max(int(ranks["rank0"].max()) + 1, 1))
    fold_of = ranks["prompt"].astype(str).map(lambda p: prompt_fold(p, folds))
    if fold_of.nunique() < 2:
        raise WorkbenchError("held-out evaluation needs prompts in at least two folds (give more calibration prompts)")
    rows = []
    for fold in sorted(fold_of.unique()):
        fit_ranks, test_ranks = ranks[fold_of != fold], ranks[fold_of == fold]
        acc = marginals_from_ranks(fit_ranks, top_r)
        stats = path_stats_from_ranks(fit_ranks, top_r)
        replay = replay_model_from_ranks(fit_ranks)
        truth_positions = path_stats_from_ranks(test_ranks, top_r)
        truth = replay_model_from_ranks(test_ranks)
        chosen = list(trees) if trees is not None else []
        if trees is None:
            space = sum(top_r ** d for d in range(1, acc.num_heads + 1))
            for b in budgets:
                if b - 1 <= space:
                    chosen.append(search_tree("greedy", b, acc, stats).tree)
                    chosen.append(search_tree("empirical", b, acc, stats).tree)
        for tree in chosen:
            steps = truth.steps(tree)
            actual = sum(steps) / len(steps)
            pred = {"independence": expected_tokens(tree, acc), "empirical": expected_tokens(tree, stats),
                    "replay": expected_tokens(tree, replay)}
            row = {
                "tree": tree.name, "node_budget": tree.node_budget, "fold": int(fold),
                "test_positions": truth_positions.positions, "test_steps": len(steps),
                "actual": actual, "actual_per_position": expected_tokens(tree, truth_positions),
            }
            for m in MODELS:
                row[f"predicted_{m}"] = pred[m]
                row[f"error_{m}"] = (pred[m] - actual) / actual
            rows.append(row)
    return pd.DataFrame(rows, columns=HOLDOUT_COLUMNS)


def summarize_holdout(table: pd.DataFrame) -> pd.DataFrame:
    """Per tree: step-weighted pooled prediction vs truth over folds, and mean |fold error|."""
    rows = []
    for (name, budget), g in table.groupby(["tree", "node_budget"], sort=False):
        w = g["test_steps"].to_numpy(float)
        actual = float((g["actual"] * w).sum() / w.sum())
        wp = g["test_positions"].to_numpy(float)
        row = {"tree": name, "node_budget": int(budget), "folds": len(g), "actual": actual,
               "actual_per_position": float((g["actual_per_position"] * wp).sum() / wp.sum())}
        for model in MODELS:
            pred = float((g[f"predicted_{model}"] * w).sum() / w.sum())
            row[f"predicted_{model}"] = pred
            row[f"pooled_error_{model}"] = (pred - actual) / actual
            row[f"mean_abs_fold_error_{model}"] = float(g[f"error_{model}"].abs().mean())
        rows.append(row)
    return pd.DataFrame(rows)
