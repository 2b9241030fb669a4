"""Per-step tree policies in the engine (medusa.policy): lossless, the budget kept, lookup branches used."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from common.errors import WorkbenchError
from medusa.decode import DecodeConfig, generate
from medusa.hybrid import HybridConfig
from medusa.policy import DynamicPolicy, LookupPolicy, StaticPolicy
from medusa.testing import OracleProposer, RandomProposer, greedy_reference, tiny_backbone
from trees.confidence import fit_confidence
from trees.dynamic import DynamicConfig
from trees.tree import chain, dense, preset

PROMPT = [5, 17, 3, 42, 8, 11]


@pytest.fixture(scope="module")
def bb():
    return tiny_backbone(2)


def identity_map(heads: int = 4):
    """A confidence map that is (about) the identity: hits drawn with probability = prob."""
    rng = np.random.default_rng(0)
    p = rng.random(4000)
    return fit_confidence(pd.DataFrame({"head": 1 + np.arange(4000) % heads, "prob": p, "hit": rng.random(4000) < p}))


@pytest.mark.parametrize("budget", [1, 6, 16])
def test_dynamic_policy_is_lossless_and_fills_its_budget(bb, budget):
    ref = greedy_reference(bb, PROMPT, 24)
    policy = DynamicPolicy(identity_map(), DynamicConfig(budget=budget), top_k=4)
    out = generate(bb, OracleProposer(PROMPT + ref, 4, 96), policy, PROMPT, DecodeConfig(max_new_tokens=24))
    assert out.output_ids == ref
    assert all(s.nodes == budget for s in out.steps)
    assert out.tree_name == f"dynamic_{budget}" and out.node_budget == budget
    if budget > 1:  # the oracle's rank-0 guesses are the most probable, so the best paths hold them
        assert out.mean_accepted_length > 1.5


def test_dynamic_policy_with_random_heads_is_still_lossless(bb):
    ref = greedy_reference(bb, PROMPT, 16)

    class Scored(RandomProposer):
        def propose_scored(self, hidden, tokens, top_k):
            ids = self.propose(hidden, tokens, top_k)
            return ids, torch.softmax(torch.randn(self.num_heads, top_k), -1).sort(-1, descending=True).values

    out = generate(bb, Scored(4, 96), DynamicPolicy(identity_map(), DynamicConfig(budget=10), top_k=5), PROMPT,
                   DecodeConfig(max_new_tokens=16))
    assert out.output_ids == ref


def test_dynamic_policy_needs_scored_heads(bb):
    with pytest.raises(WorkbenchError, match="propose_scored"):
        generate(bb, RandomProposer(4, 96), DynamicPolicy(identity_map(), DynamicConfig(budget=4)), PROMPT,
                 DecodeConfig(max_new_tokens=4))


def test_lookup_policy_catches_repeats_losslessly(bb):
    # a tiny random model's greedy text falls into a loop: prompt lookup then guesses whole runs
    prompt = [62, 2, 80, 12, 92, 8]
    ref = greedy_reference(bb, prompt, 40)
    assert len(set(ref[-12:])) < 12, "the reference continuation should repeat for this test"
    lookup_only = LookupPolicy(StaticPolicy(preset("root")), HybridConfig(budget=8, lookup_nodes=7))
    out = generate(bb, None, lookup_only, prompt, DecodeConfig(max_new_tokens=40))
    assert out.output_ids == ref
    assert out.mean_accepted_length > 1.5
    assert max(s.nodes for s in out.steps) > 1 and min(s.nodes for s in out.steps) == 1  # no match: root alone
    # with (useless) random heads beside the chain: still lossless, the chain still pays
    hybrid = LookupPolicy(StaticPolicy(dense([2, 2])), HybridConfig(budget=14, lookup_nodes=7))
    out2 = generate(bb, RandomProposer(4, 96), hybrid, prompt, DecodeConfig(max_new_tokens=40))
    assert out2.output_ids == ref and out2.mean_accepted_length > 1.5
    assert all(s.nodes <= 14 for s in out2.steps)


def test_lookup_policy_with_dynamic_heads_and_oracle(bb):
    ref = greedy_reference(bb, PROMPT, 30)
    policy = LookupPolicy(DynamicPolicy(identity_map(), DynamicConfig(budget=8), top_k=3),
                          HybridConfig(budget=12, lookup_nodes=4))
    out = generate(bb, OracleProposer(PROMPT + ref, 4, 96), policy, PROMPT, DecodeConfig(max_new_tokens=30))
    assert out.output_ids == ref and out.mean_accepted_length > 2


def test_lookup_budget_below_heads_tree_is_refused():
    with pytest.raises(WorkbenchError, match="below"):
        LookupPolicy(StaticPolicy(chain(4)), HybridConfig(budget=3, lookup_nodes=1))


def test_bench_methods_dynamic_and_lookup_are_lossless(bb, tmp_path):
    from bench.methods import MethodContext, MethodSettings, build_method, resolve_options

    confidence = identity_map().save(tmp_path / "confidence.csv")
    ref = greedy_reference(bb, PROMPT, 20)
    context = MethodContext(backbone=bb, settings=MethodSettings(0.0, 0.09, 0.3), heads=OracleProposer(PROMPT + ref, 4, 96),
                            heads_name="oracle", tree=chain(2))
    dyn = build_method("medusa-dynamic", context,
                       resolve_options("medusa-dynamic", {"confidence": str(confidence), "budget": "6"}))
    assert dyn.generate(PROMPT, 20, 0).new_ids == ref
    assert dyn.describe()["tree"] == "dynamic_6" and dyn.describe()["node_budget"] == 6
    look = build_method("medusa-lookup", context, resolve_options("medusa-lookup", {"lookup_nodes": "5"}))
    out = look.generate(PROMPT, 20, 0)
    assert out.new_ids == ref and max(s.nodes for s in out.steps) <= 3 + 5
    assert look.describe()["node_budget"] == 8
    # nodes = the heads' tree size: a matched chain takes the heads' places, never more nodes
    same = build_method("medusa-lookup", context, resolve_options("medusa-lookup", {"lookup_nodes": "2", "nodes": "3"}))
    out = same.generate(PROMPT, 20, 0)
    assert out.new_ids == ref and max(s.nodes for s in out.steps) <= 3 and same.describe()["node_budget"] == 3
    with pytest.raises(WorkbenchError, match="nodes"):
        resolve_options("medusa-lookup", {"nodes": "-1"})
    with pytest.raises(WorkbenchError, match="below the heads tree"):
        build_method("medusa-lookup", context, resolve_options("medusa-lookup", {"nodes": "2"}))
    with pytest.raises(WorkbenchError, match="confidence"):
        build_method("medusa-dynamic", context,
                     resolve_options("medusa-dynamic", {"confidence": str(tmp_path / "none.csv")}))


def test_padded_lookup_policy_verifies_a_fixed_node_count_losslessly(bb):
    prompt = [62, 2, 80, 12, 92, 8]
    ref = greedy_reference(bb, prompt, 40)
    padded = LookupPolicy(StaticPolicy(dense([2, 2])), HybridConfig(budget=14, lookup_nodes=7, pad=True))
    for heads in (RandomProposer(4, 96), OracleProposer(prompt + ref, 4, 96)):
        out = generate(bb, heads, padded, prompt, DecodeConfig(max_new_tokens=40))
        assert out.output_ids == ref
        assert {s.nodes for s in out.steps} == {14}
