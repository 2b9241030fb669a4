"""Dynamic trees: optimal against brute force, equal to the greedy search, and the direct buffer builder."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from common.errors import WorkbenchError
from medusa.tree_attention import TreeBuffers, buffers_from_parents, tree_buffers
from trees.acceptance_model import Marginals, expected_tokens
from trees.best_first import search_tree
from trees.dynamic import DynamicConfig, dynamic_tree
from trees.tree import Tree, default_tree, preset

FIELDS = ("ancestor_mask", "depth", "head", "rank0", "parent", "retrieve_indices", "internal")


def assert_same_buffers(a: TreeBuffers, b: TreeBuffers) -> None:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), name


def node_arrays(tree: Tree) -> tuple[list[int], list[int], list[int], list[int]]:
    depth = [0] + [len(p) for p in tree.paths]
    return tree.parents(), depth, depth, [0] + [p[-1] for p in tree.paths]


def random_tree(seed: int, n: int) -> Tree:
    rng = np.random.default_rng(seed)
    paths: set[tuple[int, ...]] = set()
    while len(paths) < n:
        parent = () if not paths or rng.random() < 0.3 else sorted(paths)[rng.integers(len(paths))]
        if len(parent) < 5:
            paths.add(parent + (int(rng.integers(4)),))
    return Tree.from_paths(paths)


PRESETS = ["mc_sim_7b_63", "root", "chain_1", "chain_5", "dense_2x2", "dense_3x2x2", "dense_10"]


@pytest.mark.parametrize("tree", [preset(n) for n in PRESETS] + [default_tree()] + [random_tree(s, 20) for s in range(4)],
                         ids=PRESETS + ["default"] + [f"random{s}" for s in range(4)])
def test_buffers_from_parents_equal_tree_buffers(tree):
    direct = buffers_from_parents(*node_arrays(tree))
    assert_same_buffers(direct, tree_buffers(tree))
    assert direct.tree.paths == tree.paths  # rebuilt from the rank paths
    assert buffers_from_parents(*(torch.tensor(a) for a in node_arrays(tree)), tree=tree).tree is tree


def test_buffers_from_parents_take_lookup_nodes_and_refuse_bad_orders():
    # root, a head node, and a lookup branch of two nodes (head -1): no rank path, so the tree is given
    b = buffers_from_parents([-1, 0, 0, 2], [0, 1, 1, 2], [0, 1, -1, -1], [0, 0, 0, 0], tree=preset("chain_1"))
    assert b.retrieve_indices.tolist() == [[0, 1, -1], [0, 2, 3]]
    assert b.ancestor_mask[3].tolist() == [True, False, True, True] and b.internal.tolist() == [0, 2]
    with pytest.raises(WorkbenchError, match="no rank path"):
        buffers_from_parents([-1, 0, 0, 2], [0, 1, 1, 2], [0, 1, -1, -1], [0, 0, 0, 0])
    with pytest.raises(WorkbenchError, match="before its children"):
        buffers_from_parents([-1, 2, 0], [0, 2, 1], [0, 2, 1], [0, 0, 0])
    with pytest.raises(WorkbenchError, match="depth"):
        buffers_from_parents([-1, 0, 1], [0, 1, 1], [0, 1, 2], [0, 0, 0])
    with pytest.raises(WorkbenchError, match="root first"):
        buffers_from_parents([0, 0], [0, 1], [0, 1], [0, 0])


def all_trees_best(probs: np.ndarray, n_paths: int) -> float:
    """Best summed path value over every prefix-closed set of `n_paths` paths (brute force)."""
    k, width = probs.shape
    space = [p for d in range(1, k + 1) for p in itertools.product(range(width), repeat=d)]
    value = {p: float(np.prod([probs[i, r] for i, r in enumerate(p)])) for p in space}
    best = -1.0
    for subset in itertools.combinations(space, n_paths):
        chosen = set(subset)
        if all(len(p) == 1 or p[:-1] in chosen for p in subset):
            best = max(best, sum(value[p] for p in subset))
    return 1.0 + best


@pytest.mark.parametrize("shape, seed", [((2, 3), 0), ((3, 2), 1), ((2, 3), 2), ((3, 2), 3)])
def test_dynamic_tree_is_optimal_against_brute_force(shape, seed):
    probs = np.random.default_rng(seed).random(shape)
    space = sum(shape[1] ** d for d in range(1, shape[0] + 1))
    for budget in range(1, min(space, 8) + 2):
        dt = dynamic_tree(probs, DynamicConfig(budget=budget))
        assert dt.num_nodes == budget
        assert dt.expected_tokens == pytest.approx(all_trees_best(probs, budget - 1), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_dynamic_tree_equals_the_greedy_search(seed):
    rng = np.random.default_rng(seed)
    probs = rng.random((4, 10))
    if seed % 2:  # many exact ties: the tie order (shorter, then lexicographic) must match too
        probs = np.round(probs * 4) / 4
    probs = probs / probs.sum(1, keepdims=True) * 0.9  # a valid rank-accuracy table for Marginals
    marginals = Marginals(probs, np.zeros(probs.shape, int), np.zeros(4, int))
    for budget in (1, 2, 16, 64, 200):
        dt = dynamic_tree(torch.tensor(probs), DynamicConfig(budget=budget))
        want = search_tree("greedy", budget, marginals).tree
        assert dt.paths == want.paths
        assert dt.tree().paths == Tree.from_paths(dt.paths).paths  # canonical order: node i is paths[i - 1]
        assert dt.expected_tokens == pytest.approx(expected_tokens(want, marginals), rel=1e-12)
        np.testing.assert_allclose(dt.value[1:], [marginals.probability(p) for p in dt.paths], rtol=1e-12)
        assert_same_buffers(buffers_from_parents(dt.parents, dt.depth, dt.head, dt.rank0), tree_buffers(dt.tree()))
        # best first: values never increase along the priority order, and every prefix is a tree
        assert (np.diff(dt.value[dt.priority]) <= 0).all()
        seen = {0}
        for node in dt.priority.tolist():
            assert dt.parents[node] in seen
            seen.add(node)


def test_dynamic_tree_limits():
    probs = np.full((4, 5), 0.5)
    dt = dynamic_tree(probs, DynamicConfig(budget=100, max_depth=2, top_k=3))
    assert dt.num_nodes == 1 + 3 + 9  # the whole space the limits allow
    assert dt.depth.max() == 2 and dt.rank0.max() == 2
    root = dynamic_tree(probs, DynamicConfig(budget=1))
    assert root.num_nodes == 1 and root.paths == () and root.expected_tokens == 1.0
    for bad in (np.full((2, 3), 1.5), np.full((2, 3), np.nan), np.ones(3)):
        with pytest.raises(WorkbenchError):
            dynamic_tree(bad)
    with pytest.raises(WorkbenchError, match="budget"):
        DynamicConfig(budget=0)
