"""Acceptance models: expected tokens, table formats, correlated heads, held-out evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.errors import WorkbenchError
from trees.acceptance_model import (
    RANKS_COLUMNS,
    expected_tokens,
    load_marginals,
    load_path_stats,
    marginals_from_frame,
    marginals_from_ranks,
    parse_path,
    path_stats_from_matrix,
    path_stats_from_ranks,
    path_str,
    replay_model_from_ranks,
    simulate_steps,
)
from trees.holdout import HOLDOUT_COLUMNS, holdout_evaluation, summarize_holdout
from trees.tree import Tree, chain


def ranks_frame(mat: np.ndarray, per_prompt: int = 50) -> pd.DataFrame:
    n, k = mat.shape
    rows = [(f"p{i // per_prompt}", i % per_prompt, h + 1, int(mat[i, h])) for i in range(n) for h in range(k)]
    return pd.DataFrame(rows, columns=RANKS_COLUMNS)


def correlated_matrix(n: int = 6000, k: int = 3, seed: int = 0) -> np.ndarray:
    """Heads that are all right on 'easy' positions and mostly wrong on hard ones (strong correlation)."""
    rng = np.random.default_rng(seed)
    easy = rng.random(n) < 0.5
    mat = np.empty((n, k), dtype=np.int64)
    for h in range(k):
        p0 = np.where(easy, 0.95, 0.15)
        mat[:, h] = np.where(rng.random(n) < p0, 0, rng.integers(1, 6, n))
    mat[mat >= 4] = -1
    return mat


def test_expected_tokens_hand_computed():
    mat = np.array([[0, 0], [0, 1], [1, -1], [-1, 0]])
    df = ranks_frame(mat, per_prompt=4)
    acc = marginals_from_ranks(df, top_r=2)
    stats = path_stats_from_ranks(df, top_r=2)
    assert acc.accuracy[0].tolist() == [0.5, 0.25]
    assert acc.accuracy[1].tolist() == [0.5, 0.25]
    tree = Tree.from_paths([(0,), (0, 0), (1,)])
    # empirical: P(0)=2/4, P(0,0)=1/4, P(1)=1/4
    assert expected_tokens(tree, stats) == pytest.approx(1 + 0.5 + 0.25 + 0.25)
    # independence: 0.5 + 0.5*0.5 + 0.25
    assert expected_tokens(tree, acc) == pytest.approx(1 + 0.5 + 0.25 + 0.25)
    # the path (1, 0) never occurs jointly (rank -1 follows 1), though independence gives it 1/8
    assert stats.probability((1, 0)) == 0.0
    assert acc.probability((1, 0)) == pytest.approx(0.125)
    assert expected_tokens(Tree.from_paths([]), stats) == 1.0


def test_prefix_counts_stop_at_first_absent_rank():
    stats = path_stats_from_matrix(np.array([[-1, 0, 0], [0, -1, 0], [0, 0, 0]]), top_r=3)
    assert stats.count == {(0,): 2, (0, 0): 1, (0, 0, 0): 1}
    assert stats.positions == 3


def test_tables_round_trip_through_csv(tmp_path):
    df = ranks_frame(correlated_matrix(300))
    acc, stats = marginals_from_ranks(df, 4), path_stats_from_ranks(df, 4)
    acc.to_frame().to_csv(tmp_path / "accuracy.csv", index=False)
    stats.to_frame().to_csv(tmp_path / "paths.csv", index=False)
    acc2, stats2 = load_marginals(tmp_path / "accuracy.csv"), load_path_stats(tmp_path / "paths.csv")
    np.testing.assert_allclose(acc2.accuracy, acc.accuracy)
    assert acc2.count.tolist() == acc.count.tolist() and acc2.positions.tolist() == acc.positions.tolist()
    assert stats2.count == stats.count and stats2.positions == stats.positions
    # per head, counts (rank0 = -1 included) sum to the positions seen
    table = acc.to_frame()
    assert (table.groupby("head")["count"].sum() == 300).all()
    assert set(table["rank0"]) == {-1, 0, 1, 2, 3}


def test_path_strings():
    assert path_str((0, 1, 0)) == "0-1-0" and parse_path("0-1-0") == (0, 1, 0) and parse_path("") == ()
    with pytest.raises(WorkbenchError):
        parse_path("0-x")


def test_cumulative_topk_table_is_differenced():
    df = pd.DataFrame({"head": [1, 1, 1, 2, 2, 2], "topk": [1, 2, 3] * 2,
                       "accuracy": [0.5, 0.7, 0.75, 0.2, 0.3, 0.3], "count": [1000] * 6})
    acc = marginals_from_frame(df)
    np.testing.assert_allclose(acc.accuracy, [[0.5, 0.2, 0.05], [0.2, 0.1, 0.0]], atol=1e-12)
    assert acc.positions.tolist() == [1000, 1000]
    with pytest.raises(WorkbenchError, match="topk = 1..3"):
        marginals_from_frame(df[df["topk"] != 2])
    bad = df.copy()
    bad.loc[1, "accuracy"] = 0.4
    with pytest.raises(WorkbenchError, match="decreases"):
        marginals_from_frame(bad)


@pytest.mark.parametrize("text", [
    "", "foo,bar\n1,2\n", "head,rank0,accuracy,count\n1,0,abc,3\n", "head,rank0,accuracy,count\n0,0,0.5,3\n",
    "head,rank0,accuracy,count\n1,0,1.5,3\n", "head,rank0,accuracy,count\n1,0,0.7,3\n1,1,0.6,3\n",
])
def test_malformed_accuracy_files_raise_one_line_errors(tmp_path, text):
    f = tmp_path / "accuracy.csv"
    f.write_text(text)
    with pytest.raises(WorkbenchError) as e:
        load_marginals(f)
    assert "\n" not in str(e.value)


def test_missing_files_raise():
    with pytest.raises(WorkbenchError, match="not found"):
        load_marginals("/nonexistent/accuracy.csv")
    with pytest.raises(WorkbenchError, match="not found"):
        load_path_stats("/nonexistent/paths.csv")


def test_empirical_model_beats_independence_on_correlated_heads():
    df = ranks_frame(correlated_matrix())
    table = holdout_evaluation(df, trees=[chain(3), Tree.from_paths([(0,), (0, 0), (0, 0, 0), (1,), (0, 1)])])
    err_ind = table["error_independence"].abs().mean()
    err_emp = table["error_empirical"].abs().mean()
    assert err_emp < 0.03
    assert err_ind > 3 * err_emp
    # correlation makes long top-1 chains likelier than independence says: it under-predicts
    assert (table["error_independence"] < 0).all()


def test_holdout_searches_trees_when_none_given():
    table = holdout_evaluation(ranks_frame(correlated_matrix(2000)), budgets=(4, 8))
    assert set(table["tree"]) == {"greedy_4", "empirical_4", "greedy_8", "empirical_8"}
    assert table["fold"].nunique() == 5 and list(table.columns) == HOLDOUT_COLUMNS
    summary = summarize_holdout(table)
    assert len(summary) == 4 and (summary["folds"] == 5).all()
    assert (summary["pooled_error_empirical"].abs() < 0.03).all()
    assert (summary["pooled_error_empirical"].abs() < summary["pooled_error_independence"].abs()).all()


def test_simulate_steps_replays_greedy_engine():
    mat = np.array([[0, 0], [0, 5], [1, 0], [9, 9], [0, 1], [-1, 0]])
    tree = Tree.from_paths([(0,), (0, 0), (1,)])
    # s=0: (0,0) -> 3; s=3: rank 9 -> 1; s=4: (0,) then (0,1) absent -> 2; s=6 ends
    assert simulate_steps(mat, tree) == [3, 1, 2]


def test_replay_model_captures_runs_of_easy_text():
    """Easy positions in runs: steps skip through them, so the per-step mean is below the
    per-position mean; only the replay model sees it."""
    rng = np.random.default_rng(4)
    blocks = []
    for _ in range(400):
        easy = rng.random() < 0.5
        blocks.append(np.zeros((12, 3), dtype=np.int64) if easy else np.full((12, 3), -1, dtype=np.int64))
    mat = np.concatenate(blocks)
    df = ranks_frame(mat, per_prompt=240)
    tree = chain(3)
    table = holdout_evaluation(df, trees=[tree])
    summary = summarize_holdout(table)
    row = summary.iloc[0]
    assert row["actual_per_position"] == pytest.approx(1 + 3 * (mat[:, 0] == 0).mean(), rel=0.02)
    assert row["actual"] < 0.8 * row["actual_per_position"]  # far fewer steps in easy runs
    assert abs(row["pooled_error_replay"]) < 0.03
    assert row["pooled_error_empirical"] > 0.2
    assert abs(row["pooled_error_independence"]) > 5 * abs(row["pooled_error_replay"])
    model = replay_model_from_ranks(df)
    assert model.positions == len(mat)
    assert expected_tokens(tree, model) == pytest.approx(sum(model.steps(tree)) / len(model.steps(tree)))
