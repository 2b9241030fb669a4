"""Prompt lookup against a brute-force reference, and hybrid trees (lookup chain + heads) under greedy acceptance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import WorkbenchError
from medusa.acceptance import AcceptanceConfig, accept
from medusa.hybrid import BOTH, HEADS, LOOKUP, HybridConfig, hybrid_tree, priority_paths
from medusa.lookup import LookupConfig, lookup_chain
from medusa.tree_attention import tree_buffers, tree_candidates
from trees.dynamic import DynamicConfig, dynamic_tree
from trees.tree import Tree, preset


def reference_chain(ids: list[int], config: LookupConfig) -> list[int]:
    """Plain loops: the longest suffix n-gram with an earlier occurrence followed by a token."""
    for n in range(config.max_ngram, config.min_ngram - 1, -1):
        if n >= len(ids):
            continue
        suffix = ids[-n:]
        starts = [s for s in range(len(ids) - n) if ids[s: s + n] == suffix]
        if starts:
            s = starts[-1] if config.match == "latest" else starts[0]
            return ids[s + n: s + n + config.max_chain]
    return []


def test_lookup_by_hand():
    assert lookup_chain([5, 6, 7, 8, 5, 6], LookupConfig(max_ngram=3, max_chain=4)) == [7, 8, 5, 6]
    # the latest occurrence of "1 2" drafts, unless asked for the first (transformers' choice)
    ids = [1, 2, 3, 9, 1, 2, 4, 9, 1, 2]
    assert lookup_chain(ids, LookupConfig(max_ngram=2, max_chain=2)) == [4, 9]
    assert lookup_chain(ids, LookupConfig(max_ngram=2, max_chain=2, match="first")) == [3, 9]
    # a longer n-gram wins over a more recent shorter one
    ids = [7, 1, 2, 30, 5, 2, 40, 7, 1, 2]
    assert lookup_chain(ids, LookupConfig(max_ngram=3, max_chain=1)) == [30]
    assert lookup_chain(ids, LookupConfig(max_ngram=1, max_chain=1)) == [40]
    # no earlier occurrence, or only shorter than min_ngram: nothing
    assert lookup_chain([1, 2, 3, 4]) == [] and lookup_chain([3]) == [] and lookup_chain([]) == []
    assert lookup_chain([1, 2, 9, 2], LookupConfig(min_ngram=2)) == []
    # a run: the latest match overlaps the suffix and drafts up to the end of the sequence
    assert lookup_chain([4, 4, 4, 4], LookupConfig(max_ngram=2, max_chain=5)) == [4]


@pytest.mark.parametrize("seed", range(20))
def test_lookup_matches_reference(seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 3 + seed % 5, size=int(rng.integers(1, 60))).tolist()
    min_ngram = 1 + seed % 2
    config = LookupConfig(max_ngram=min_ngram + int(rng.integers(0, 4)), min_ngram=min_ngram,
                          max_chain=int(rng.integers(1, 8)), match="first" if seed % 3 == 0 else "latest")
    want = reference_chain(ids, config)
    assert lookup_chain(ids, config) == want
    assert lookup_chain(np.array(ids, dtype=np.int64), config) == want
    assert lookup_chain(torch.tensor(ids), config) == want


def test_lookup_config_checks():
    for bad in (dict(min_ngram=0), dict(max_ngram=1, min_ngram=2), dict(max_chain=0), dict(match="best")):
        with pytest.raises(WorkbenchError):
            LookupConfig(**bad)


# ---- hybrid trees --------------------------------------------------------------------------------
def topk_ids(seed: int, k: int = 3, width: int = 4, vocab: int = 8) -> torch.Tensor:
    """Distinct ids per head from a small vocabulary, so chains and heads often coincide."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(vocab, generator=gen)[:width] for _ in range(k)])


def path_tokens(hyb, node: int) -> list[int]:
    out = []
    while node > 0:
        out.append(int(hyb.tokens[node]))
        node = int(hyb.parents[node])
    return out[::-1]


def test_without_chain_the_heads_get_every_node():
    tree = preset("mc_sim_7b_63")
    topk = torch.arange(40).view(4, 10)
    hyb = hybrid_tree(99, tree.paths, topk, [], HybridConfig(budget=64, lookup_nodes=10))
    assert hyb.num_nodes == 64 and hyb.lookup_nodes == 0 and hyb.heads_tree.paths == tree.paths
    assert torch.equal(hyb.tokens, tree_candidates(tree_buffers(tree), 99, topk))
    assert torch.equal(hyb.parents, torch.tensor(tree.parents()))
    # a smaller budget keeps the first paths (prefix-closed) only
    small = hybrid_tree(99, tree.paths, topk, [], HybridConfig(budget=10))
    assert small.heads_tree.paths == tree.paths[:9]


def test_chain_takes_its_share_and_shared_nodes_free_slots():
    topk = torch.tensor([[10, 11, 12], [20, 21, 22], [30, 31, 32]])
    paths = Tree.from_paths([(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1)]).paths
    # chain 10 -> 20 -> 77 -> 78: its first two tokens are head 1/2's top-1 under the root
    hyb = hybrid_tree(5, paths, topk, [10, 20, 77, 78], HybridConfig(budget=8, lookup_nodes=3))
    assert hyb.num_nodes == 8 and hyb.lookup_nodes == 3  # 78 is beyond the chain's share
    assert hyb.tokens.tolist() == [5, 10, 20, 77, 11, 12, 21, 20]
    assert hyb.source.tolist() == [0, BOTH, BOTH, LOOKUP, HEADS, HEADS, HEADS, HEADS]
    assert hyb.parents.tolist() == [-1, 0, 1, 2, 0, 0, 1, 4]
    assert hyb.head.tolist() == [0, 1, 2, -1, 1, 1, 2, 2] and hyb.rank0.tolist() == [0, 0, 0, 0, 1, 2, 1, 0]
    # siblings never repeat a token (dedup)
    pairs = list(zip(hyb.parents.tolist(), hyb.tokens.tolist()))
    assert len(set(pairs)) == len(pairs)
    assert hyb.heads_tree.paths == ((0,), (1,), (2,), (0, 0), (0, 1), (1, 0))
    assert hybrid_tree(5, paths, topk, [10, 20, 77], HybridConfig(budget=3, lookup_nodes=5)).lookup_nodes == 2


def planted_logits(hyb, truth: list[int], vocab: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Internal-node logits whose argmax continues `truth` on its path and is random elsewhere."""
    buffers = hyb.buffers()
    logits = torch.randn(int(buffers.internal.shape[0]), vocab, generator=gen)
    for row, node in enumerate(buffers.internal.tolist()):
        prefix = path_tokens(hyb, node)
        want = truth[len(prefix)] if truth[: len(prefix)] == prefix and len(prefix) < len(truth) else \
            int(torch.randint(vocab, (1,), generator=gen))
        logits[row, want] = 100.0
    return logits, buffers


def longest_prefix(hyb, truth: list[int]) -> list[int]:
    """Brute force: walk from the root taking the child whose token continues `truth`."""
    node, out = 0, []
    while len(out) < len(truth):
        kids = [i for i in range(hyb.num_nodes) if int(hyb.parents[i]) == node and int(hyb.tokens[i]) == truth[len(out)]]
        if not kids:
            break
        node = kids[0]
        out.append(int(hyb.tokens[node]))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_greedy_acceptance_keeps_the_longest_planted_prefix(seed):
    vocab, gen = 8, torch.Generator().manual_seed(1000 + seed)
    topk = topk_ids(seed)
    heads = dynamic_tree(torch.rand(3, 4, generator=gen), DynamicConfig(budget=12))
    chain = torch.randint(vocab, (int(torch.randint(0, 7, (1,), generator=gen)),), generator=gen).tolist()
    hyb = hybrid_tree(3, priority_paths(heads), topk, chain, HybridConfig(budget=14, lookup_nodes=5))
    assert hyb.num_nodes <= 14
    # the truth follows a random root-to-node path (lookup branch half the time), then goes on at random
    start = [i for i in range(hyb.num_nodes) if int(hyb.source[i]) in (LOOKUP, BOTH)] if seed % 2 else []
    node = start[-1] if start else int(torch.randint(hyb.num_nodes, (1,), generator=gen))
    truth = path_tokens(hyb, node) + torch.randint(vocab, (4,), generator=gen).tolist()
    logits, buffers = planted_logits(hyb, truth, vocab, gen)
    kept = accept(hyb.tokens, logits, buffers, AcceptanceConfig())
    assert int(kept.nodes[0]) == 0
    assert hyb.tokens[kept.nodes[1:]].tolist() == longest_prefix(hyb, truth)
    assert len(kept.nodes) - 1 >= len(path_tokens(hyb, node))


def test_acceptance_runs_through_lookup_nodes_past_the_heads():
    topk = torch.tensor([[10, 11], [20, 21]])
    heads = Tree.from_paths([(0,), (1,), (0, 0), (1, 0)]).paths
    chain = [10, 40, 41, 42, 43]  # shares its first node with head 1's top-1, then leaves the heads
    hyb = hybrid_tree(1, heads, topk, chain, HybridConfig(budget=16, lookup_nodes=5))
    truth = [10, 40, 41, 42, 7, 7]
    logits, buffers = planted_logits(hyb, truth, 64, torch.Generator().manual_seed(0))
    kept = accept(hyb.tokens, logits, buffers, AcceptanceConfig())
    assert hyb.tokens[kept.nodes].tolist() == [1, 10, 40, 41, 42]  # 4 drafted tokens, 3 past the heads' depth
    assert hyb.source[kept.nodes].tolist() == [0, BOTH, LOOKUP, LOOKUP, LOOKUP]
    truth = [10, 20, 9]  # now the head child under the shared node is right
    logits, buffers = planted_logits(hyb, truth, 64, torch.Generator().manual_seed(1))
    kept = accept(hyb.tokens, logits, buffers, AcceptanceConfig())
    assert hyb.tokens[kept.nodes].tolist() == [1, 10, 20] and hyb.source[kept.nodes].tolist() == [0, BOTH, HEADS]


@pytest.mark.parametrize("chain_tokens", [[], [10, 20, 77], [90, 91, 92, 93, 94, 95]])
def test_pad_fills_every_step_to_the_budget_with_head_candidates(chain_tokens):
    topk = torch.tensor([[10, 11, 12], [20, 21, 22], [30, 31, 32]])
    paths = Tree.from_paths([(0,), (1,), (0, 0)]).paths
    for budget in (7, 12, 20):
        hyb = hybrid_tree(5, paths, topk, chain_tokens, HybridConfig(budget=budget, lookup_nodes=4, pad=True))
        assert hyb.num_nodes == budget
        pairs = list(zip(hyb.parents.tolist(), hyb.tokens.tolist()))
        assert len(set(pairs)) == len(pairs)  # no two children of one node share a token
        for n in range(1, hyb.num_nodes):  # every padded node is a real head candidate of its depth
            if int(hyb.head[n]) > 0:
                d, r = int(hyb.head[n]), int(hyb.rank0[n])
                assert d == int(hyb.depth[n]) and int(topk[d - 1, r]) == int(hyb.tokens[n])
        hyb.buffers()  # parents before children, depths consistent
    unpadded = hybrid_tree(5, paths, topk, [10, 20, 77], HybridConfig(budget=12, lookup_nodes=4))
    assert unpadded.num_nodes < 12
