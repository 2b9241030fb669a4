"""Greedy and typical acceptance on hand-built distributions where the answer is known."""

import math

import pytest
import torch

from common.errors import WorkbenchError
from medusa.acceptance import AcceptanceConfig, accept, node_acceptance, typical_threshold
from medusa.tree_attention import tree_buffers
from trees.tree import Tree

V = 8
# nodes: 0 root, 1 [0], 2 [1], 3 [0,0], 4 [1,0]; internal nodes 0, 1, 2
TREE = tree_buffers(Tree.from_paths([[0], [1], [0, 0], [1, 0]]))


def logits_from_probs(rows):
    return torch.log(torch.tensor(rows, dtype=torch.float32))


def peaked(token, p=0.9):
    row = [(1 - p) / (V - 1)] * V
    row[token] = p
    return row


def test_greedy_accepts_argmax_path():
    internal = logits_from_probs([peaked(2), peaked(5), peaked(6)])  # root->2, node1->5, node2->6
    cand = torch.tensor([0, 2, 3, 5, 6])  # node1=2 (ok), node2=3 (no), node3=5 (ok under node1)
    kept = accept(cand, internal, TREE, AcceptanceConfig())
    assert kept.nodes.tolist() == [0, 1, 3]


def test_greedy_rejects_child_of_rejected_parent():
    internal = logits_from_probs([peaked(3), peaked(5), peaked(6)])
    cand = torch.tensor([0, 2, 3, 5, 6])  # node2=3 accepted, node4=6 accepted under node2
    assert accept(cand, internal, TREE, AcceptanceConfig()).nodes.tolist() == [0, 2, 4]
    cand = torch.tensor([0, 2, 4, 5, 6])  # nothing matches the root's argmax 3
    assert accept(cand, internal, TREE, AcceptanceConfig()).nodes.tolist() == [0]


def test_typical_threshold_formula():
    cfg = AcceptanceConfig(temperature=1.0, posterior_threshold=0.09, posterior_alpha=0.3)
    uniform = torch.zeros(1, V)
    _, thr = typical_threshold(uniform, cfg)
    h = math.log(V)
    assert thr.item() == pytest.approx(min(0.09, 0.3 * math.exp(-h)))


def test_typical_must_accept_and_must_reject():
    cfg = AcceptanceConfig(temperature=1.0, posterior_threshold=0.09, posterior_alpha=0.3)
    # Root distribution: token 1 has p=0.5, token 2 has p=0.02 (below min(0.09, 0.3 e^-H)).
    root = [0.02, 0.5, 0.02, 0.02, 0.02, 0.02, 0.02, 0.38]
    internal = logits_from_probs([root, peaked(4), peaked(4)])
    cand = torch.tensor([0, 1, 2, 4, 4])
    ok, _ = node_acceptance(cand, internal, TREE, cfg)
    assert ok.tolist() == [True, True, False, True, True]
    # token 7 (p=0.38) is not the argmax but is typical: accepted although greedy would reject it
    cand2 = torch.tensor([0, 7, 2, 4, 4])
    assert accept(cand2, internal, TREE, cfg).nodes.tolist() == [0, 1, 3]
    assert accept(cand2, internal, TREE, AcceptanceConfig()).nodes.tolist() == [0]


def test_typical_ties_go_to_higher_log_probability():
    cfg = AcceptanceConfig(temperature=1.0)
    root = [0.02, 0.3, 0.56, 0.02, 0.02, 0.02, 0.02, 0.04]
    internal = logits_from_probs([root, peaked(4), peaked(4)])
    cand = torch.tensor([0, 1, 2, 4, 4])  # both depth-2 paths accepted, node2's parent token more likely
    assert accept(cand, internal, TREE, cfg).nodes.tolist() == [0, 2, 4]


def test_config_validation():
    with pytest.raises(WorkbenchError):
        AcceptanceConfig(temperature=-1)
    with pytest.raises(WorkbenchError):
        AcceptanceConfig(posterior_threshold=0)
    with pytest.raises(WorkbenchError):
        AcceptanceConfig(posterior_alpha=0)
