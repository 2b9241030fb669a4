"""The compiled engine (medusa.compiled): token-identical to eager, compiles once per tree, falls back.

Compiling is slow even for a tiny model (inductor's C++ GEMM autotuning), so one module-scoped
backbone is shared and each test compiles few shapes.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from medusa import compiled as compiled_mod
from medusa.batch import generate_batch
from medusa.compiled import Compiled, CompiledProposer
from medusa.decode import ALL_ROWS_MAX_NODES, DecodeConfig, generate
from medusa.heads import HeadsConfig, MedusaHeads
from medusa.hybrid import HybridConfig
from medusa.policy import LookupPolicy, StaticPolicy
from medusa.testing import (
    BatchOracleProposer,
    OracleProposer,
    RandomProposer,
    greedy_reference,
    tiny_backbone,
)
from trees.tree import chain, dense, preset

PROMPT = [5, 17, 3, 42, 8, 11]


@pytest.fixture(scope="module")
def bb():
    return tiny_backbone(2)


def _graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


def test_compiled_matches_eager_and_compiles_once_per_tree(bb):
    ref = greedy_reference(bb, PROMPT, 20)
    big = preset("mc_sim_7b_63")
    assert big.node_budget > ALL_ROWS_MAX_NODES  # the internal-rows-only path is exercised too
    for tree in (chain(3), big):
        eager = DecodeConfig(max_new_tokens=20)
        comp = DecodeConfig(max_new_tokens=20, compile=True, compile_bucket=64)
        want = generate(bb, OracleProposer(PROMPT + ref, 4, 96), tree, PROMPT, eager)
        got = generate(bb, OracleProposer(PROMPT + ref, 4, 96), tree, PROMPT, comp)
        assert got.output_ids == want.output_ids == ref
        assert [s.accepted_length for s in got.steps] == [s.accepted_length for s in want.steps]
        # a second request of another prompt length (same bucket) reuses the compiled graphs
        before = _graphs()
        other = PROMPT[:4]
        ref2 = greedy_reference(bb, other, 20)
        again = generate(bb, OracleProposer(other + ref2, 4, 96), tree, other, comp)
        assert again.output_ids == ref2
        assert _graphs() == before, "a new request recompiled the verify"
    assert bb.compiled("verify", lambda: None).failed is None


def test_plain_decoding_compiled_matches(bb):
    ref = greedy_reference(bb, PROMPT, 12)
    out = generate(bb, None, preset("root"), PROMPT, DecodeConfig(max_new_tokens=12, compile=True,
                                                               compile_bucket=64))
    assert out.output_ids == ref
    assert out.mean_accepted_length == 1.0


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch, capsys):
    def broken(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("planted compiler failure\nsecond line")
        return call

    monkeypatch.setattr(compiled_mod.torch, "compile", broken)
    fresh = tiny_backbone(2)  # its own compiled-function table, built with the broken compiler
    ref = greedy_reference(fresh, PROMPT, 10)
    out = generate(fresh, OracleProposer(PROMPT + ref, 4, 96), chain(2), PROMPT,
                   DecodeConfig(max_new_tokens=10, compile=True, compile_bucket=64))
    assert out.output_ids == ref
    err = capsys.readouterr().err
    assert err.count("warning: compiling verify failed") == 1
    assert "planted compiler failure" in err and "second line" not in err


def test_compiled_proposer_matches_heads(bb):
    torch.manual_seed(1)
    heads = MedusaHeads.for_backbone(bb, HeadsConfig(num_heads=3))
    for block in heads.blocks:  # non-trivial (trained-looking) blocks
        torch.nn.init.normal_(block[0].linear.weight, std=0.2)
    proposer = CompiledProposer(heads, bb.device)
    for _ in range(3):
        hidden = torch.randn(bb.hidden_size)
        assert torch.equal(proposer.propose(hidden, [], 4), heads.propose(hidden, [], 4))
    assert proposer.num_heads == 3 and proposer.compile_s > 0


def test_shape_key_counts_one_compile_per_shape():
    calls = []
    c = Compiled(lambda x: calls.append(x.shape) or x * 2, "double", "cpu")
    c.compiled = c.eager  # no real compile needed to check the bookkeeping
    c(torch.ones(3))
    first = c.compile_s
    c(torch.ones(3))
    assert c.compile_s == first  # a seen shape does not count again
    c(torch.ones(4))
    assert len(c._seen) == 2


def test_more_shapes_than_dynamos_default_limit_all_compile():
    # dynamo keeps 8 graphs per function by default; a 9th shape would silently run eagerly
    c = Compiled(lambda x: x * 2 + 1, "double", "cpu")
    before = _graphs()
    for n in range(1, 10):
        assert torch.equal(c(torch.ones(n)), torch.full((n,), 3.0))
    assert _graphs() - before == 9


def test_compiled_batch_rows_equal_batch1_and_compile_once(bb):
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 90, (n,), generator=g).tolist() for n in (5, 11, 3, 8)]
    refs = [greedy_reference(bb, p, 16) for p in prompts]
    comp = DecodeConfig(max_new_tokens=16, compile=True, compile_bucket=64)
    for tree in (chain(3), preset("mc_sim_7b_63")):  # all rows computed, then internal rows only
        oracle = BatchOracleProposer([p + r for p, r in zip(prompts, refs)], 4, 96)
        # 2 fixed rows for 4 requests: rows are freed and refilled, one request arrives late
        got = generate_batch(bb, oracle, tree, prompts, comp, batch_size=2, arrivals=[0, 0, 0, 3])
        assert [r.output_ids for r in got] == refs
        assert min(r.mean_accepted_length for r in got) > 1.5
        before = _graphs()
        again = generate_batch(bb, RandomProposer(4, 96), tree, prompts[::-1], comp, batch_size=2)
        assert [r.output_ids for r in again] == refs[::-1]
        assert _graphs() == before, "another call with the same shapes recompiled the batched verify"
    assert bb.compiled("verify", lambda: None).failed is None


def test_padded_lookup_policy_compiles_once(bb):
    prompt = [62, 2, 80, 12, 92, 8]
    ref = greedy_reference(bb, prompt, 24)
    policy = LookupPolicy(StaticPolicy(dense([2, 2])), HybridConfig(budget=8, lookup_nodes=5, pad=True))
    comp = DecodeConfig(max_new_tokens=24, compile=True, compile_bucket=64)
    out = generate(bb, RandomProposer(4, 96), policy, prompt, comp)
    assert out.output_ids == ref and {s.nodes for s in out.steps} == {8}
    before = _graphs()
    again = generate(bb, RandomProposer(4, 96, seed=1), policy, prompt[:4], comp)
    assert again.output_ids == greedy_reference(bb, prompt[:4], 24)
    assert _graphs() == before, "a per-step tree of the same node count recompiled the verify"


def test_dynamic_policies_are_lossless_on_the_compiled_static_cache(bb):
    """Both per-step policies with dynamic heads (medusa-dynamic; the hybrid over a dynamic tree) on the
    compiled engine's static cache: the same text as plain greedy, a fixed node count per step."""
    import numpy as np
    import pandas as pd

    from medusa.policy import DynamicPolicy
    from medusa.testing import OracleProposer
    from trees.confidence import fit_confidence
    from trees.dynamic import DynamicConfig

    rng = np.random.default_rng(0)
    p = rng.random(2000)
    cmap = fit_confidence(pd.DataFrame({"head": 1 + np.arange(2000) % 4, "prob": p, "hit": rng.random(2000) < p}))
    prompt = [62, 2, 80, 12, 92, 8]
    ref = greedy_reference(bb, prompt, 24)
    comp = DecodeConfig(max_new_tokens=24, compile=True, compile_bucket=64)
    dynamic = DynamicPolicy(cmap, DynamicConfig(budget=6), top_k=3)
    hybrid = LookupPolicy(DynamicPolicy(cmap, DynamicConfig(budget=6), top_k=3), HybridConfig(budget=8, lookup_nodes=3, pad=True))
    for policy, nodes in ((dynamic, 6), (hybrid, 8)):
        out = generate(bb, OracleProposer(prompt + ref, 4, 96), policy, prompt, comp)
        assert out.output_ids == ref and {s.nodes for s in out.steps} == {nodes}
        assert out.mean_accepted_length > 1.5
