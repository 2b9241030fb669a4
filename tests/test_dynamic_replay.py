"""Replay of per-step dynamic trees from a candidates table: planted steps, and the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.cli import run_cli
from trees import dynamic_replay as D
from trees.dynamic import DynamicConfig


def candidates(best: np.ndarray, truth: np.ndarray, top_r: int = 3) -> pd.DataFrame:
    """One prompt: at position s head k gives probability .9 to rank best[s, k] (.05 to the others);
    its true rank is truth[s, k] (-1: no candidate is the true token)."""
    rows = []
    for s in range(best.shape[0]):
        for k in range(best.shape[1]):
            for r in range(top_r):
                rows.append({"prompt": "p", "position": s, "head": k + 1, "rank0": r,
                             "prob": 0.9 if r == best[s, k] else 0.05, "hit": bool(r == truth[s, k])})
    return pd.DataFrame(rows)


def identity_map(table: pd.DataFrame):
    from trees.confidence import ConfidenceMap
    heads = int(table["head"].max())
    knots = pd.DataFrame([{"head": k, "prob_lo": lo, "prob_hi": lo, "prob_mean": lo, "confidence": lo, "hits": 1,
                           "count": 1} for k in range(1, heads + 1) for lo in (0.0, 1.0)])
    return ConfidenceMap(knots)


def test_a_budget_two_tree_follows_each_steps_most_confident_candidate():
    # 2 heads; at each position head 1's favourite is rank best[s, 0]
    best = np.array([[1, 0], [0, 0], [2, 0], [0, 0], [0, 0]])
    truth = np.array([[1, 0], [0, 1], [0, 0], [0, 0], [-1, 0]])
    table = candidates(best, truth)
    (prompt,) = D.prompt_candidates(table)
    assert prompt.ranks.tolist() == truth.tolist() and prompt.probs.shape == (2, 5, 3)
    steps = D.simulate_dynamic_steps(prompt, identity_map(table), DynamicConfig(budget=2))
    # s=0: the tree is {(1,)} and the true head-1 rank is 1 -> 2 tokens; s=2: favourite 2, truth 0 -> 1;
    # s=3: {(0,)} and truth 0 -> 2 tokens; s=5 is past the end
    assert steps == [2, 1, 2]
    deep = D.simulate_dynamic_steps(prompt, identity_map(table), DynamicConfig(budget=3))
    # budget 3: the chain (b1,) -> (b1, 0) beats a second head-1 candidate (.81 > .05)
    assert deep == [3, 3]  # s=0: (1, 0) matches truth (1, 0); s=3: (0, 0) matches (0, 0)


def test_static_vs_dynamic_table_and_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    best = rng.integers(0, 3, size=(60, 3))
    truth = np.where(rng.uniform(size=(60, 3)) < 0.6, best, rng.integers(-1, 3, size=(60, 3)))
    table = candidates(best, truth)
    out = D.static_vs_dynamic(table, [1, 4, 16])
    assert out["static"].iloc[0] == 1.0 and out["dynamic"].iloc[0] == 1.0  # the root alone
    assert (out["dynamic"].iloc[1:] > out["static"].iloc[1:]).all()  # the favourites carry the signal
    table.to_parquet(tmp_path / "probs.parquet", index=False)
    assert run_cli(D.main, ["--calibration", str(tmp_path), "--budgets", "4"]) == 0
    assert "dynamic" in capsys.readouterr().out
    assert run_cli(D.main, ["--calibration", str(tmp_path / "none")]) == 2
    assert "error: " in capsys.readouterr().err


@pytest.mark.parametrize("budgets", ["x", "4,,y"])
def test_bad_budgets_are_one_line(tmp_path, capsys, budgets):
    assert run_cli(D.main, ["--calibration", str(tmp_path), "--budgets", budgets]) == 2
    assert "--budgets" in capsys.readouterr().err
