"""Tree type: validation, canonical order, parents, presets, JSON and medusa_choices round trips."""

import json

import pytest

from common.errors import WorkbenchError
from trees.tree import MC_SIM_7B_63, Tree, TreeError, chain, dense, preset


def test_canonical_order_and_parents():
    t = Tree.from_paths([[1], [0, 0], [0], [0, 1], [0, 0, 0]])
    assert t.paths == ((0,), (1,), (0, 0), (0, 1), (0, 0, 0))
    assert t.parents() == [-1, 0, 0, 1, 1, 3]
    assert t.node_budget == 6 and t.depth == 3 and t.top_k == 2
    assert t.nodes_per_depth() == [2, 2, 1]
    assert t.width_per_depth() == [2, 2, 1]
    assert t.leaves() == [2, 4, 5]


@pytest.mark.parametrize(
    "paths, message",
    [
        ([[0], [0]], "appears twice"),
        ([[0, 1]], "not prefix-closed"),
        ([[]], "empty"),
        ([[-1]], "negative"),
    ],
)
def test_invalid_trees_rejected(paths, message):
    with pytest.raises(TreeError, match=message):
        Tree.from_paths(paths)


def test_depth_and_rank_limits():
    t = chain(5)
    with pytest.raises(TreeError, match="exceeds the number of heads"):
        t.check_fits(num_heads=4)
    with pytest.raises(TreeError, match="top_k"):
        Tree.from_paths([[0], [3]], top_k=3)
    assert issubclass(TreeError, WorkbenchError)


def test_mc_sim_7b_63_budget_is_64():
    t = preset("mc_sim_7b_63")
    assert len(MC_SIM_7B_63) == 63
    assert t.node_budget == 64
    assert t.depth == 4
    assert t.top_k == 10


def test_builders():
    assert chain(3).paths == ((0,), (0, 0), (0, 0, 0))
    d = dense([3, 2])
    assert d.node_budget == 1 + 3 + 6
    assert preset("dense_3x2").paths == d.paths
    assert preset("chain_2").paths == chain(2).paths
    assert preset("root").node_budget == 1
    with pytest.raises(TreeError, match="unknown tree preset"):
        preset("nope")


def test_json_round_trip(tmp_path):
    t = preset("mc_sim_7b_63")
    p = t.save(tmp_path / "t.json")
    back = Tree.load(p)
    assert back.paths == t.paths and back.name == t.name
    # the bare medusa_choices list form also loads
    (tmp_path / "mc.json").write_text(json.dumps(t.medusa_choices()))
    assert Tree.load(tmp_path / "mc.json").paths == t.paths


def test_bad_tree_files(tmp_path):
    with pytest.raises(TreeError, match="not found"):
        Tree.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TreeError, match="not valid JSON"):
        Tree.load(tmp_path / "bad.json")
    (tmp_path / "shape.json").write_text(json.dumps({"paths": [["a"]]}))
    with pytest.raises(TreeError, match="integer ranks"):
        Tree.load(tmp_path / "shape.json")
    (tmp_path / "budget.json").write_text(json.dumps({"paths": [[0]], "node_budget": 5}))
    with pytest.raises(TreeError, match="node_budget"):
        Tree.load(tmp_path / "budget.json")
