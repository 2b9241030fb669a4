"""Tree search: optimality against brute force, ties, budgets, CLI, round trips, Optuna."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

import common.paths
from analysis import fig_trees, figures
from bench.calibrate import collect_ranks
from bench.validate import markdown, measure_tree, replay_accepted_length
from common.cli import run_cli
from common.errors import WorkbenchError
from common.paths import DEFAULT_HEADS_DIR
from medusa.heads import HeadsConfig, MedusaHeads
from medusa.testing import OracleProposer, greedy_reference
from tests.test_acceptance_model import correlated_matrix, ranks_frame
from trees import search as search_mod
from trees.acceptance_model import (
    Marginals,
    expected_tokens,
    marginals_from_ranks,
    path_stats_from_matrix,
    path_stats_from_ranks,
)
from trees.baselines import best_dense, validation_trees
from trees.cost import LatencyProfile
from trees.inputs import heads_name
from trees.optuna_search import PARETO_COLUMNS, monotone_verify_times, open_storage
from trees.search import (
    SearchResult,
    main,
    resolve_accuracy,
    search,
    search_batches,
    search_tree,
    space_size,
)
from trees.tree import Tree, chain, dense, preset


def marginals(table: list[list[float]]) -> Marginals:
    a = np.array(table, dtype=float)
    return Marginals(accuracy=a, count=np.rint(a * 1000).astype(np.int64), positions=np.full(len(a), 1000))


def accuracy_frame(table: list[list[float]]) -> pd.DataFrame:
    return marginals(table).to_frame()


def all_paths(num_heads: int, top_r: int) -> list[tuple[int, ...]]:
    return [p for d in range(1, num_heads + 1) for p in itertools.product(range(top_r), repeat=d)]


def brute_force_best(n_paths: int, model, num_heads: int, top_r: int) -> float:
    """Best 1 + sum P over every prefix-closed set of n_paths paths (exhaustive)."""
    best = -1.0
    for subset in itertools.combinations(all_paths(num_heads, top_r), n_paths):
        chosen = set(subset)
        if all(len(p) == 1 or p[:-1] in chosen for p in subset):
            best = max(best, expected_tokens(subset, model))
    return best


TABLES = [
    [[0.6, 0.2, 0.1], [0.4, 0.3, 0.1]],
    [[0.3, 0.3, 0.3], [0.9, 0.05, 0.0]],
    [[0.5, 0.25], [0.5, 0.3], [0.45, 0.4]],
    [[0.2, 0.7], [0.1, 0.85], [0.6, 0.3]],  # marginals not sorted by rank
]


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("budget", [1, 2, 3, 4, 5, 6, 7])
def test_greedy_matches_brute_force(table, budget):
    m = marginals(table)
    result = search_tree("greedy", budget, m)
    assert result.tree.node_budget == budget
    want = brute_force_best(budget - 1, m, m.num_heads, m.top_r)
    assert result.predicted_independence == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("budget", [2, 4, 6, 8])
def test_empirical_is_optimal_under_empirical_model(budget):
    mat = correlated_matrix(800, k=3, seed=1)
    mat[mat >= 2] = -1
    stats = path_stats_from_matrix(mat, top_r=2)
    m = marginals_from_ranks(ranks_frame(mat), top_r=2)
    result = search_tree("empirical", budget, m, stats)
    want = brute_force_best(budget - 1, stats, 3, 2)
    assert result.predicted_empirical == pytest.approx(want, abs=1e-12)
    greedy = search_tree("greedy", budget, m, stats)
    assert result.predicted_empirical >= greedy.predicted_empirical - 1e-12


def test_ties_are_broken_deterministically():
    m = marginals([[0.5, 0.5], [0.5, 0.5]])
    trees = {search_tree("greedy", 4, m).tree.paths for _ in range(5)}
    assert trees == {((0,), (1,), (0, 0))}  # equal products: shorter first, then lexicographic
    flat = marginals([[1.0, 0.0], [1.0, 0.0]])  # child equals parent: the parent still comes first
    assert search_tree("greedy", 3, flat).tree.paths == ((0,), (0, 0))
    zero = marginals([[0.0, 0.0], [0.0, 0.0]])  # every path has probability 0: a valid tree anyway
    assert search_tree("greedy", 5, zero).tree.paths == ((0,), (1,), (0, 0), (0, 1))


def test_empirical_fills_unseen_paths_by_independence_order():
    mat = np.array([[0, 0]] * 6 + [[1, -1]] * 4)
    stats = path_stats_from_matrix(mat, top_r=3)
    m = marginals([[0.6, 0.4, 0.0], [0.6, 0.0, 0.1]])
    tree = search_tree("empirical", 5, m, stats).tree
    # seen: (0) 0.6, (1) 0.4, (0,0) 0.6; then unseen, best independence: (0,2) 0.06 over (1,0)? no: (1,0)=0.24
    assert tree.paths == ((0,), (1,), (0, 0), (1, 0))


def test_caps_depth_and_space_checks():
    m = marginals([[0.5, 0.3, 0.1]] * 3)
    t = search_tree("greedy", 7, m, max_depth=2, top_k=[3, 1]).tree
    assert t.depth == 2 and t.width_per_depth() == [3, 1] and t.node_budget == 7
    assert space_size([3, 1]) == 6 and space_size([10] * 4) == 11110
    with pytest.raises(WorkbenchError, match="exceeds the tree space"):
        search_tree("greedy", 8, m, max_depth=2, top_k=[3, 1])  # 6 nodes + root = 7 < 8
    with pytest.raises(WorkbenchError, match="node budget must be >= 1"):
        search_tree("greedy", 0, m)
    with pytest.raises(WorkbenchError, match="exceeds the 3 heads"):
        search_tree("greedy", 8, m, max_depth=4)
    with pytest.raises(WorkbenchError, match="exceeds the 3 ranks"):
        search_tree("greedy", 8, m, top_k=4)
    with pytest.raises(WorkbenchError, match="unknown method"):
        search("beam", 8, accuracy_frame([[0.5, 0.3]]))
    with pytest.raises(WorkbenchError, match="needs path statistics"):
        search("empirical", 3, accuracy_frame([[0.5, 0.3]]))


def test_search_timings_and_sizes():
    df = ranks_frame(correlated_matrix(4000, k=4, seed=2))
    m, stats = marginals_from_ranks(df, 10), path_stats_from_ranks(df, 10)
    for method in ("greedy", "empirical"):
        for budget, limit in ((64, 1.0), (1024, 10.0)):
            t0 = time.perf_counter()
            r = search_tree(method, budget, m, stats)
            assert time.perf_counter() - t0 < limit
            assert r.tree.node_budget == budget


def test_search_interface_with_dataframes():
    df = ranks_frame(correlated_matrix(1000, k=3))
    acc = marginals_from_ranks(df).to_frame()
    res = search("empirical", 16, acc, ranks=df)
    assert isinstance(res, SearchResult) and isinstance(res.tree, Tree)
    assert res.tree.node_budget == 16 and res.predicted_empirical is not None
    assert res.predicted_independence == pytest.approx(expected_tokens(res.tree, marginals_from_ranks(df)))


def test_default_accuracy_resolution(tmp_path, monkeypatch):
    assert heads_name() == DEFAULT_HEADS_DIR.name
    monkeypatch.setattr(common.paths, "CALIBRATION_ROOT", tmp_path / "calibration")
    monkeypatch.setattr(common.paths, "SCRATCH_CALIBRATION", tmp_path / "_scratch" / "calibration")
    monkeypatch.setattr(common.paths, "HEADS_ROOT", tmp_path / "heads")
    monkeypatch.setattr(common.paths, "REPO_ROOT", tmp_path)
    with pytest.raises(WorkbenchError, match="bench.calibrate"):
        search("greedy", 8)
    heads_dir = tmp_path / "heads" / heads_name()
    heads_dir.mkdir(parents=True)
    pd.DataFrame({"head": [1, 1, 2, 2], "topk": [1, 2, 1, 2], "accuracy": [0.6, 0.8, 0.3, 0.4],
                  "count": [100] * 4}).to_csv(heads_dir / "accuracy.csv", index=False)
    r = search("greedy", 4)  # falls back to the heads' cumulative table
    assert r.predicted_empirical is None and r.tree.paths == ((0,), (1,), (0, 0))
    with pytest.raises(WorkbenchError, match="path statistics"):
        search("empirical", 4)
    cal = tmp_path / "calibration" / heads_name()
    cal.mkdir(parents=True)
    df = ranks_frame(correlated_matrix(500, k=2))
    marginals_from_ranks(df).to_frame().to_csv(cal / "accuracy.csv", index=False)
    path_stats_from_ranks(df).to_frame().to_csv(cal / "paths.csv", index=False)
    r = search("empirical", 4)  # the calibration wins, with its path statistics
    assert r.predicted_empirical is not None and "calibration" in r.accuracy_source


# ---- CLI ----------------------------------------------------------------------------------------
@pytest.fixture()
def calibration(tmp_path):
    df = ranks_frame(correlated_matrix(2000, k=4, seed=3))
    d = tmp_path / "cal"
    d.mkdir()
    marginals_from_ranks(df, 4).to_frame().to_csv(d / "accuracy.csv", index=False)
    path_stats_from_ranks(df, 4).to_frame().to_csv(d / "paths.csv", index=False)
    return d


def test_cli_writes_tree_and_round_trips(calibration, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(search_mod, "DEFAULT_TREE_FILE", tmp_path / "default.json")
    out = tmp_path / "t.json"
    rc = run_cli(main, ["--budget", "16", "--method", "empirical", "--accuracy", str(calibration / "accuracy.csv"),
                        "--out", str(out), "--plot", str(tmp_path / "t.png"), "--set-default"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "nodes per depth" in text and "width per depth" in text and "independence" in text and "empirical" in text
    tree = Tree.load(out)
    assert tree.node_budget == 16 and tree.meta["method"] == "empirical"
    assert Tree.load(tmp_path / "default.json").paths == tree.paths
    assert (tmp_path / "t.png").stat().st_size > 1000
    assert Tree.from_dict(json.loads(tree.to_json())) == tree
    rc = run_cli(main, ["--budget", "16", "--method", "empirical", "--accuracy", str(calibration / "accuracy.csv"),
                        "--out", str(tmp_path / "u.json"), "--format", "medusa_choices"])
    choices = json.loads(capsys.readouterr().out)
    assert rc == 0 and Tree.from_paths(choices).paths == tree.paths
    (tmp_path / "bare.json").write_text(json.dumps(choices))
    assert Tree.load(tmp_path / "bare.json").paths == tree.paths
    assert preset("mc_sim_7b_63").node_budget == 64


@pytest.mark.parametrize("args, match", [
    (["--budget", "0"], "node budget must be >= 1"),
    (["--budget", "100000"], "exceeds the tree space"),
    (["--budget", "8", "--method", "beam"], "unknown method"),
    (["--budget", "abc"], "invalid int"),
    (["--budget", "8", "--top-k", "2,x"], "--top-k"),
    (["--budget", "8", "--format", "yaml"], "--format"),
    (["--budget", "8", "--trials", "5"], "optuna only"),
    (["--budget", "8", "--pareto"], "optuna only"),
    (["--budget", "8", "--batch-size", "4"], "optuna only"),
])
def test_cli_bad_input_one_line_exit_2(calibration, capsys, args, match):
    rc = run_cli(main, args + ["--accuracy", str(calibration / "accuracy.csv"), "--out", str(calibration / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and match in err


def test_cli_missing_or_malformed_accuracy_exit_2(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("head,rank0,accuracy\n1,0,0.5\n")
    for acc in (str(tmp_path / "missing.csv"), str(bad)):
        proc = subprocess.run([sys.executable, "-m", "trees.search", "--budget", "8", "--accuracy", acc,
                               "--out", str(tmp_path / "t.json")], capture_output=True, text=True)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")


# ---- Optuna -------------------------------------------------------------------------------------
class LinearProfile:
    """A synthetic latency profile: verify time grows linearly past 16 query tokens."""

    device = "synthetic"

    def verify_time(self, n_query: int, context: int = 512) -> float:
        return 0.010 + 0.0005 * max(0, n_query - 16)


def test_optuna_predicted_objective_and_shared_storage(calibration, tmp_path):
    storage = tmp_path / "studies.db"
    kw = dict(accuracy=str(calibration / "accuracy.csv"), profile=LinearProfile(), storage=str(storage),
              study_name="s", min_budget=2)
    r1 = search("optuna", 64, n_trials=15, **kw)
    r2 = search("optuna", 64, n_trials=10, **kw)  # a second worker continues the same study
    assert r2.tree.meta["trials"] == 25 and r1.tree.meta["trials"] == 15
    assert r2.predicted_tokens_per_s >= r1.predicted_tokens_per_s
    want = r2.predicted_empirical / LinearProfile().verify_time(r2.tree.node_budget)
    assert r2.predicted_tokens_per_s == pytest.approx(want)
    assert 2 <= r2.tree.node_budget <= 64
    assert r2.tree.meta["study"] == "s" and r2.study_name == "s"
    journal = search("optuna", 32, n_trials=5, accuracy=str(calibration / "accuracy.csv"),
                     profile=LinearProfile(), storage=str(tmp_path / "j.log"), study_name="j")
    assert journal.tree.meta["trials"] == 5 and (tmp_path / "j.log").stat().st_size > 0
    with pytest.raises(WorkbenchError, match="storage"):
        open_storage(str(tmp_path / "x.txt"))


def test_default_study_name_changes_with_the_calibration(tmp_path):
    """Retrained heads give a new accuracy table: its search must not resume the old table's trials."""
    kw = dict(profile=LinearProfile(), storage=str(tmp_path / "s.db"), min_budget=2, n_trials=3)
    a = search("optuna", 6, accuracy_frame([[0.6, 0.2], [0.3, 0.2]]), **kw)
    b = search("optuna", 6, accuracy_frame([[0.5, 0.2], [0.3, 0.2]]), **kw)
    again = search("optuna", 6, accuracy_frame([[0.6, 0.2], [0.3, 0.2]]), **kw)
    assert a.study_name != b.study_name and again.study_name == a.study_name
    assert b.tree.meta["trials"] == 3 and again.tree.meta["trials"] == 6


def test_verify_times_are_made_monotone():
    class Dip:
        def verify_time(self, n_query: int, context: int = 512) -> float:
            return {1: 0.10, 2: 0.20, 3: 0.15, 4: 0.25}[n_query]

    assert monotone_verify_times(Dip(), 4) == [0.10, 0.20, 0.20, 0.25]


def latency_csv(folder):
    rows = [{"device_slug": "cpu-x", "device": "x", "backbone": "b", "dtype": "float32", "context": c,
             "n_query": n, "median_s": 0.01 + 0.0004 * n + c * 1e-6, "floor_s": 0.005}
            for c in (128, 512) for n in (1, 2, 4, 8, 16, 32, 64, 128)]
    pd.DataFrame(rows).to_csv(folder / "cpu-x.csv", index=False)
    return folder / "cpu-x.csv"


def test_optuna_cli_with_latency_csv(calibration, tmp_path, capsys, monkeypatch):
    latency_csv(tmp_path)
    monkeypatch.setattr(search_mod, "DEFAULT_TREE_FILE", tmp_path / "default.json")
    rc = run_cli(main, ["--method", "optuna", "--budget", "64", "--trials", "12", "--accuracy",
                        str(calibration / "accuracy.csv"), "--latency", str(tmp_path / "cpu-x.csv"),
                        "--storage", str(tmp_path / "o.db"), "--out", str(tmp_path / "o.json"), "--set-default"])
    out = capsys.readouterr().out
    assert rc == 0 and "predicted tokens/s" in out
    assert Tree.load(tmp_path / "default.json").meta["method"] == "optuna"


def batch_profile_rows():
    """Verify time T(B, N): batch 1 is flat (a big tree is as cheap as a small one), batch 8 pays per node."""
    return [{"device_slug": "cpu-x", "backbone": "b", "dtype": "float32", "batch": b, "context": 512, "n_query": n,
             "median_s": 0.010 + (0.0 if b == 1 else 0.002 * n), "floor_s": 0.005}
            for b in (1, 8) for n in (1, 2, 4, 8, 16, 32, 64)]


def test_optuna_picks_the_node_budget_per_batch_size(calibration, tmp_path):
    """At batch 8 the search scores trees with T(8, N), so the best budget shrinks where a big tree
    is free at batch 1 but costly at batch 8; throughput is 8 x tokens per step / T(8, N)."""
    profile = LatencyProfile(pd.DataFrame(batch_profile_rows()), "synthetic", "b")
    inputs = resolve_accuracy(str(calibration / "accuracy.csv"))
    res = search_batches(inputs, (1, 8), 32, profile=profile, storage=str(tmp_path / "b.db"), min_budget=2,
                         n_trials=40, name="opt")
    one, eight = res[1], res[8]
    assert one.tree.node_budget > eight.tree.node_budget, (one.tree.node_budget, eight.tree.node_budget)
    assert one.tree.node_budget >= 16 and eight.tree.node_budget <= 8
    assert eight.verify_s == pytest.approx(profile.verify_time(eight.tree.node_budget, batch=8))
    assert eight.predicted_tokens_per_s == pytest.approx(8 * eight.predicted_empirical / eight.verify_s)
    assert one.predicted_tokens_per_s == pytest.approx(one.predicted_empirical / one.verify_s)
    assert (one.tree.name, eight.tree.name) == ("opt", "opt_b8")
    assert eight.tree.meta["batch"] == 8 and one.tree.meta["batch"] == 1
    # batch 1 keeps the study name it always had; batch 8 is a study of its own
    plain = search("optuna", 32, str(calibration / "accuracy.csv"), profile=profile,
                   storage=str(tmp_path / "b.db"), min_budget=2, n_trials=1)
    assert plain.study_name == one.study_name and "/B" not in one.study_name
    assert eight.study_name.endswith("/B8")
    with pytest.raises(WorkbenchError, match="no rows for batch 4"):
        search_batches(inputs, (1, 4), 32, profile=profile, storage=str(tmp_path / "c.db"), n_trials=1)
    assert not (tmp_path / "c.db").exists()  # refused before any study was opened
    with pytest.raises(WorkbenchError, match="optuna only"):
        search("greedy", 8, str(calibration / "accuracy.csv"), batch_size=2)


def test_optuna_cli_one_tree_per_batch_size(calibration, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(search_mod, "DEFAULT_TREE_FILE", tmp_path / "default.json")
    pd.DataFrame(batch_profile_rows()).to_csv(tmp_path / "cpu-x.csv", index=False)
    base = ["--method", "optuna", "--budget", "32", "--trials", "30", "--accuracy", str(calibration / "accuracy.csv"),
            "--latency", str(tmp_path / "cpu-x.csv"), "--storage", str(tmp_path / "o.db"), "--out",
            str(tmp_path / "o.json")]
    rc = run_cli(main, base + ["--batch-size", "1,8", "--set-default", "--pareto"])
    out = capsys.readouterr().out
    assert rc == 0 and "best node budget per batch size" in out and "at batch 8" in out
    one, eight = Tree.load(tmp_path / "o.json"), Tree.load(tmp_path / "o_b8.json")
    assert (one.name, eight.name) == ("optuna_32", "optuna_32_b8")
    assert one.meta["batch"] == 1 and eight.meta["batch"] == 8 and eight.node_budget < one.node_budget
    assert Tree.load(tmp_path / "default.json").paths == one.paths
    front = pd.read_csv(tmp_path / "o_b8_pareto.csv")
    assert (front["batch"] == 8).all() and pd.read_csv(tmp_path / "o_pareto.csv")["batch"].eq(1).all()
    table = out[out.index("best node budget per batch size"):].splitlines()[2:]
    assert [int(line.split()[0]) for line in table] == [1, 8]
    assert [int(line.split()[1]) for line in table] == [one.node_budget, eight.node_budget]
    for args, match in ((["--batch-size", "1,4"], "no rows for batch 4"), (["--batch-size", "0"], "--batch-size"),
                        (["--batch-size", "1,8", "--format", "json"], "--format"),
                        (["--batch-size", "8", "--set-default"], "batch-1 tree")):
        (tmp_path / "o.json").unlink(missing_ok=True)
        assert run_cli(main, base + args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and match in err, err
        assert not (tmp_path / "o.json").exists()


def test_optuna_pareto_front(calibration, tmp_path):
    """Two objectives (tokens/step up, verify time down): a front of non-dominated trees, and the
    chosen tree is its fastest member."""
    kw = dict(accuracy=str(calibration / "accuracy.csv"), profile=LinearProfile(), storage=str(tmp_path / "p.db"),
              min_budget=2, n_trials=40)
    r = search("optuna", 32, pareto=True, **kw)
    assert len(r.pareto) >= 1 and all(len(p.values) == 2 for p in r.pareto)
    assert {"node_budget", "max_depth"} <= set(r.pareto[0].params)
    assert r.tree.node_budget <= 32 and r.tree.meta["objective"].endswith("-pareto")
    points = [(p.values[0], p.values[1]) for p in r.pareto]
    assert [v for _, v in points] == sorted(v for _, v in points)  # cheapest verify first
    for a in points:  # no member dominates another
        assert not any(b != a and b[0] >= a[0] and b[1] <= a[1] for b in points)
    for p in r.pareto:
        assert p.values[1] == pytest.approx(LinearProfile().verify_time(p.tree.node_budget))
        assert p.values[0] == pytest.approx(expected_tokens(p.tree, resolve_accuracy(kw["accuracy"]).stats))
    assert r.predicted_tokens_per_s == pytest.approx(max(t / v for t, v in points))
    table = search_mod.pareto_table(r)
    assert list(table.columns) == PARETO_COLUMNS and table["chosen"].sum() == 1
    assert len(table) == len(r.pareto) and table["node_budget"].max() <= 32
    # the single-objective study of the same space is another study: both open side by side
    single = search("optuna", 32, **{**kw, "n_trials": 3})
    assert single.study_name != r.study_name and len(single.pareto) == 1


def test_library_search_leaves_optuna_logging_alone(calibration, tmp_path):
    before = optuna.logging.get_verbosity()
    try:
        optuna.logging.set_verbosity(optuna.logging.INFO)
        search("optuna", 8, accuracy=str(calibration / "accuracy.csv"), profile=LinearProfile(),
               storage=str(tmp_path / "v.db"), n_trials=2)
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
    finally:
        optuna.logging.set_verbosity(before)


def test_optuna_pareto_cli_writes_front_beside_tree(calibration, tmp_path, capsys):
    out = tmp_path / "front.json"
    rc = run_cli(main, ["--method", "optuna", "--pareto", "--budget", "32", "--trials", "25", "--accuracy",
                        str(calibration / "accuracy.csv"), "--latency", str(latency_csv(tmp_path)),
                        "--storage", str(tmp_path / "o.db"), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "Pareto front" in text
    front = pd.read_csv(tmp_path / "front_pareto.csv")
    assert set(PARETO_COLUMNS) <= set(front.columns) and {"commit", "device_name", "latency"} <= set(front.columns)
    assert front["chosen"].sum() == 1 and (front["latency"] == "cpu-x").all()
    tree = Tree.load(out)
    chosen = front[front["chosen"]].iloc[0]
    assert Tree.from_paths(json.loads(chosen["medusa_choices"])).paths == tree.paths
    assert tree.meta["provenance"]["commit"] and tree.meta["objective"].endswith("-pareto")


def test_pareto_figure_from_a_synthetic_front(tmp_path):
    assert set(fig_trees.PARETO_REQUIRED) <= set(PARETO_COLUMNS)
    rows = [{"trial": b, "node_budget": b, "depth": 2, "tokens_per_step": tok, "verify_s": 0.03 + 0.0004 * b,
             "tokens_per_s": tok / (0.03 + 0.0004 * b), "chosen": b == 16, "medusa_choices": "[[0]]"}
            for b, tok in ((2, 1.5), (4, 1.9), (8, 2.3), (16, 2.6), (32, 2.8))]
    (tmp_path / "results" / "trees").mkdir(parents=True)
    pd.DataFrame(rows, columns=PARETO_COLUMNS).assign(latency="cpu-x").to_csv(
        tmp_path / "results" / "trees" / "opt_pareto.csv", index=False)
    paths = figures.make("pareto", tmp_path / "results", tmp_path / "figs")
    assert sorted(p.name for p in paths) == ["pareto_opt.pdf", "pareto_opt.png"]
    assert all(p.stat().st_size > 2000 for p in paths)
    assert figures.make("pareto", tmp_path / "results", tmp_path / "figs", tree="opt") == paths
    with pytest.raises(WorkbenchError, match="trees.search --method optuna --pareto"):
        figures.make("pareto", tmp_path / "results", tmp_path / "figs", tree="other")


def test_cli_bad_plot_suffix_fails_before_writing(calibration, tmp_path, capsys):
    out = tmp_path / "t.json"
    rc = run_cli(main, ["--budget", "8", "--accuracy", str(calibration / "accuracy.csv"), "--out", str(out),
                        "--plot", str(tmp_path / "t.txt")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "plot file" in err
    assert not out.exists() and not list(tmp_path.glob("t.*"))


def test_resolve_accuracy_uses_paths_beside_the_file(calibration):
    inputs = resolve_accuracy(str(calibration / "accuracy.csv"))
    assert inputs.stats is not None and inputs.marginals.num_heads == 4


# ---- validation helpers -------------------------------------------------------------------------
def test_best_dense_and_validation_trees(calibration):
    inputs = resolve_accuracy(str(calibration / "accuracy.csv"))
    dn = best_dense(64, inputs.stats, 4, 4)
    assert dn.name.startswith("dense_") and dn.node_budget <= 64
    # no dense tree of at most 64 nodes is predicted better (exhaustive over widths)
    for depth in range(1, 5):
        for widths in itertools.product(range(1, 5), repeat=depth):
            t = dense(list(widths))
            if t.node_budget <= 64:
                assert expected_tokens(t, inputs.stats) <= expected_tokens(dn, inputs.stats) + 1e-12
    kinds = [k for k, _ in validation_trees(inputs, 64)]
    assert kinds == ["greedy", "empirical", "dense", "chain"]  # mc_sim_7b_63 needs top-10 ranks


def test_measure_tree_with_oracle_heads(tiny):
    ids = [1, 5, 9, 12]
    oracle = OracleProposer(ids + greedy_reference(tiny, ids, 30), num_heads=3, vocab_size=tiny.vocab_size)
    m = measure_tree(tiny, oracle, chain(3), [ids], max_new_tokens=30, quality=True)
    assert m.accepted_length > 3.0 and m.steps >= 7 and m.quality <= 0
    base = measure_tree(tiny, None, preset("root"), [ids], max_new_tokens=30)
    assert base.accepted_length == 1.0


def test_replay_matches_engine_on_tiny_model(tiny):
    """The replayed accepted length equals the engine's for deterministic heads."""
    torch.manual_seed(1)
    heads = MedusaHeads.for_backbone(tiny, HeadsConfig(num_heads=2))
    prompts = [("a", [1, 5, 9, 12]), ("b", [7, 3])]
    ranks = collect_ranks(tiny, heads, prompts, max_new_tokens=40, top_r=10)
    tree = Tree.from_paths([(0,), (1,), (2,), (0, 0), (0, 1), (1, 0)])
    replayed, steps = replay_accepted_length(ranks, tree)
    engine = measure_tree(tiny, heads, tree, [ids for _, ids in prompts], max_new_tokens=40)
    assert steps > 10 and replayed >= 1.0
    # the engine also runs the last few positions the ranks table leaves out (no head targets there)
    assert abs(replayed - engine.accepted_length) < 0.15


def test_ranks_beside_accuracy_give_the_replay_model(calibration, tmp_path):
    df = ranks_frame(correlated_matrix(600, k=4, seed=3))
    d = tmp_path / "cal2"
    d.mkdir()
    marginals_from_ranks(df, 4).to_frame().to_csv(d / "accuracy.csv", index=False)
    path_stats_from_ranks(df, 4).to_frame().to_csv(d / "paths.csv", index=False)
    df.to_parquet(d / "ranks.parquet", index=False)
    r = search("empirical", 16, str(d / "accuracy.csv"))
    assert r.predicted_replay is not None and 1.0 <= r.predicted_replay <= 5.0
    assert r.tree.meta["predicted_replay"] == r.predicted_replay
    assert search("greedy", 16, str(calibration / "accuracy.csv")).predicted_replay is None


def test_validation_markdown_shows_the_errors_each_run_has_and_no_nan():
    base = {"tree": "t", "node_budget": 5, "predicted_independence": 1.5, "predicted_empirical": 1.6,
            "predicted_replay": 1.4, "tokens_per_s": 9.0}
    engine = pd.DataFrame([{**base, "measured_accepted_length": 1.25, "replayed_accepted_length": float("nan"),
                            "error_independence": 0.2, "error_empirical": 0.28, "error_replay": 0.12,
                            "replay_error_independence": float("nan"), "replay_error_empirical": float("nan"),
                            "replay_error_replay": float("nan")}])
    text = markdown(engine)
    assert "nan" not in text and "error_replay" in text and "replay_error_replay" not in text and "+12.0%" in text
    both = engine.assign(replayed_accepted_length=1.3, replay_error_replay=0.08)
    assert "replay_error_replay" in markdown(both) and "+8.0%" in markdown(both)
