"""Greedy, typical and sample acceptance on hand-built distributions where the answer is known.

The distribution of rule sample is tested statistically in `tests/test_sampling.py`.
"""

import math

import pytest
import torch

from common.errors import WorkbenchError
from medusa.acceptance import (
    AcceptanceConfig,
    accept,
    next_token,
    node_acceptance,
    typical_threshold,
)
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


def test_rule_is_explicit_and_inferred_from_temperature_when_not_given():
    assert AcceptanceConfig().rule == "greedy" and AcceptanceConfig().greedy
    assert AcceptanceConfig(temperature=0.7).rule == "typical"  # as before rules were explicit
    assert AcceptanceConfig(temperature=0.7, rule="sample").rule == "sample"
    assert AcceptanceConfig(rule="greedy").greedy and not AcceptanceConfig(rule="greedy").random
    assert AcceptanceConfig(temperature=1.0, typical_root="sample").random
    assert not AcceptanceConfig(temperature=1.0).random  # typical with an argmax root draws nothing
    for bad in (dict(rule="typical"), dict(rule="sample"), dict(rule="greedy", temperature=0.5),
                dict(rule="beam", temperature=1.0), dict(temperature=1.0, rule="sample", top_p=0.0),
                dict(temperature=1.0, rule="sample", top_k=-1), dict(temperature=1.0, top_p=0.9),
                dict(temperature=1.0, typical_root="median"), dict(temperature=1.0, rule="sample", typical_root="sample")):
        with pytest.raises(WorkbenchError):
            AcceptanceConfig(**bad)


SAMPLE = AcceptanceConfig(temperature=1.0, rule="sample")


def test_sample_accepts_a_sure_child_and_leaves_the_leaf_token_to_the_engine():
    internal = logits_from_probs([peaked(2, 1 - 1e-9), peaked(5, 1 - 1e-9), peaked(6)])
    cand = torch.tensor([0, 2, 3, 5, 6])  # node1 = 2 has p ~ 1 under the root, node3 = 5 under node1
    for seed in range(20):
        kept = accept(cand, internal, TREE, SAMPLE, torch.Generator().manual_seed(seed))
        assert kept.nodes.tolist() == [0, 1, 3] and kept.next_token is None  # node3 is a leaf


def test_sample_never_accepts_an_impossible_token_and_draws_from_the_residual():
    root = [0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]  # only tokens 1 and 2 possible
    internal = logits_from_probs([root, peaked(4), peaked(4)])
    seen = set()
    for seed in range(200):
        kept = accept(torch.tensor([0, 7, 1, 4, 4]), internal, TREE, SAMPLE, torch.Generator().manual_seed(seed))
        if kept.length == 1:  # token 7 (p 0) rejected, then token 1 rejected: the residual holds only 2
            assert kept.next_token == 2
        else:
            assert kept.nodes.tolist()[:2] == [0, 2]
        seen.add(kept.length)
    assert seen == {1, 2, 3}


def test_next_token_per_rule():
    logits = logits_from_probs([[0.05, 0.6, 0.3, 0.01, 0.01, 0.01, 0.01, 0.01]])[0]
    gen = torch.Generator().manual_seed(0)
    assert next_token(logits, AcceptanceConfig()) == 1 == next_token(logits, AcceptanceConfig(temperature=1.0))
    typical = AcceptanceConfig(temperature=1.0, typical_root="typical")  # only tokens above the threshold 0.09
    assert {next_token(logits, typical, gen) for _ in range(200)} == {1, 2}
    sampled = AcceptanceConfig(temperature=1.0, typical_root="sample")  # p_T itself: token 0 (p 0.05) too
    assert {next_token(logits, sampled, gen) for _ in range(300)} >= {0, 1, 2}
    top2 = AcceptanceConfig(temperature=1.0, rule="sample", top_k=2)
    assert {next_token(logits, top2, gen) for _ in range(200)} == {1, 2}
    with pytest.raises(ValueError, match="Generator"):
        next_token(logits, top2)
