"""Batched decoding (`medusa.batch`): every row equals its batch-1 output, whatever joins or leaves."""

from __future__ import annotations

import pytest
import torch

from common.errors import WorkbenchError
from medusa.acceptance import AcceptanceConfig
from medusa.batch import RequestError, generate_batch
from medusa.decode import DecodeConfig, generate
from medusa.heads import HeadsConfig, MedusaHeads
from medusa.hybrid import HybridConfig
from medusa.kv_cache import BatchKV, StaticKV
from medusa.policy import LookupPolicy, StaticPolicy
from medusa.subvocab import SubVocabHeads
from medusa.testing import BatchOracleProposer, RandomProposer, greedy_reference, tiny_backbone
from medusa.tree_attention import (
    batch_verify_mask,
    mask_layout,
    tree_buffers,
    tree_candidates,
    verify_attention_mask,
)
from trees.tree import preset

LENGTHS = (5, 17, 9, 30, 3)
NEW = 24


def prompts_for(lengths=LENGTHS, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 90, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module")
def families():
    return {f: tiny_backbone(0, family=f) for f in ("llama", "mistral", "gemma3", "qwen2", "phi3")}


def alone(backbone, heads, tree, prompts, config, seeds=None):
    seeds = seeds or [config.seed] * len(prompts)
    return [generate(backbone, heads, tree, p, DecodeConfig(**{**config.__dict__, "seed": s})).output_ids
            for p, s in zip(prompts, seeds)]


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma3", "qwen2", "phi3"])
@pytest.mark.parametrize("cache", ["static", "dynamic"])
@pytest.mark.parametrize("proposer", ["oracle", "random"])
def test_rows_equal_batch1_and_greedy(families, family, cache, proposer):
    bb = families[family]
    prompts = prompts_for()
    refs = [greedy_reference(bb, p, NEW) for p in prompts]
    heads = (BatchOracleProposer([p + r for p, r in zip(prompts, refs)], 4, bb.vocab_size) if proposer == "oracle"
             else RandomProposer(4, bb.vocab_size))
    config = DecodeConfig(max_new_tokens=NEW, cache=cache)
    # mixed lengths, 3 rows for 5 requests: two join when rows finish, one arrives at step 2
    results = generate_batch(bb, heads, preset("mc_sim_7b_63"), prompts, config, batch_size=3, arrivals=[0, 0, 0, 2, 0])
    assert [r.output_ids for r in results] == refs
    assert [r.output_ids for r in results] == alone(bb, heads, preset("mc_sim_7b_63"), prompts, config)
    if proposer == "oracle":
        assert min(r.mean_accepted_length for r in results) > 2.0  # long paths really were accepted per row


@pytest.mark.parametrize("tree", ["root", "chain_3", "mc_sim_7b_63"])
def test_medusa_heads_propose_in_one_batched_call(tiny, tree):
    heads = MedusaHeads.for_backbone(tiny, HeadsConfig(num_heads=4))
    prompts = prompts_for()
    config = DecodeConfig(max_new_tokens=NEW)
    results = generate_batch(tiny, heads, preset(tree), prompts, config, batch_size=4)
    assert [r.output_ids for r in results] == alone(tiny, heads, preset(tree), prompts, config)
    assert all(r.tree_name == tree and r.node_budget == preset(tree).node_budget for r in results)


def test_propose_batch_equals_per_row_propose(tiny):
    heads = MedusaHeads.for_backbone(tiny, HeadsConfig(num_heads=3))
    hidden = torch.randn(4, tiny.hidden_size)
    sub = SubVocabHeads(heads, torch.arange(10, 60))
    for h in (heads, sub):
        batched = h.propose_batch(hidden, 5)
        assert batched.shape == (4, 3, 5)
        assert torch.equal(batched, torch.stack([h.propose(x, [], 5) for x in hidden]))


def test_a_row_that_hits_eos_early_leaves_without_stalling_the_rest():
    prompts = prompts_for()
    first = greedy_reference(tiny_backbone(0), prompts[0], NEW)
    bb = tiny_backbone(0, eos_token_id=first[3])  # same weights; row 0 now stops at its 4th token
    refs = [greedy_reference(bb, p, NEW) for p in prompts]
    assert len(refs[0]) <= 4 and refs[0][-1] == first[3]
    heads = BatchOracleProposer([p + r for p, r in zip(prompts, refs)], 4, bb.vocab_size)
    results = generate_batch(bb, heads, preset("mc_sim_7b_63"), prompts, DecodeConfig(max_new_tokens=NEW),
                             batch_size=5)
    assert [r.output_ids for r in results] == refs
    assert results[0].stop_reason == "eos"
    assert len(results[0].steps) < max(len(r.steps) for r in results[1:])


def test_a_request_joins_mid_run(tiny):
    prompts = prompts_for((7, 12, 4))
    config = DecodeConfig(max_new_tokens=NEW, stop_on_eos=False)
    heads = RandomProposer(4, tiny.vocab_size)
    results = generate_batch(tiny, heads, preset("chain_3"), prompts, config, batch_size=3, arrivals=[0, 0, 5])
    assert [r.output_ids for r in results] == alone(tiny, heads, preset("chain_3"), prompts, config)
    # the late request was decoded beside rows already 5 steps in: its queue time covers them
    assert results[2].queued_s > results[1].queued_s
    assert len(results[2].steps) < len(results[0].steps) + 5


def test_sampled_rows_draw_what_they_would_draw_alone(tiny):
    heads = MedusaHeads.for_backbone(tiny, HeadsConfig(num_heads=4))
    prompts = prompts_for((5, 17, 9))
    config = DecodeConfig(max_new_tokens=NEW, acceptance=AcceptanceConfig(rule="sample", temperature=0.8),
                          stop_on_eos=False)
    seeds = [11, 12, 13]
    results = generate_batch(tiny, heads, preset("mc_sim_7b_63"), prompts, config, batch_size=3, seeds=seeds)
    assert [r.output_ids for r in results] == alone(tiny, heads, preset("mc_sim_7b_63"), prompts, config, seeds)
    assert results[0].output_ids != results[1].output_ids


def test_batch_size_zero_is_refused(tiny):
    with pytest.raises(WorkbenchError, match="batch size must be >= 1"):
        generate_batch(tiny, None, preset("root"), prompts_for(), DecodeConfig(max_new_tokens=4), batch_size=0)


def test_a_prompt_too_long_fails_alone(tiny):
    prompts = prompts_for((5, 600, 9))  # 600 tokens > the tiny model's 512 positions
    config = DecodeConfig(max_new_tokens=8)
    results = generate_batch(tiny, None, preset("root"), prompts, config, batch_size=2)
    assert isinstance(results[1], RequestError) and "request 1" in results[1].message
    assert "context" in results[1].message
    kept = [prompts[0], prompts[2]]
    assert [results[0].output_ids, results[2].output_ids] == alone(tiny, None, preset("root"), kept, config)


def test_per_step_policies_are_refused(tiny):
    policy = LookupPolicy(StaticPolicy(preset("root")), HybridConfig(budget=4, lookup_nodes=3))
    with pytest.raises(WorkbenchError, match="static tree"):
        generate_batch(tiny, None, policy, prompts_for(), DecodeConfig(max_new_tokens=4))


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma3"])
def test_one_row_mask_is_the_single_request_mask(family):
    layout = mask_layout(tiny_backbone(0, family=family).config)
    buffers = tree_buffers(preset("mc_sim_7b_63"))
    past, width = 21, 21 + buffers.num_nodes + 5
    one = verify_attention_mask(buffers, past, torch.float32, width, layout)
    batched = batch_verify_mask(buffers, torch.tensor([past]), torch.tensor([past]), torch.float32, width, layout)
    if isinstance(one, dict):
        assert one.keys() == batched.keys()
        assert all(torch.equal(one[k], batched[k]) for k in one)
    else:
        assert torch.equal(one, batched)


def test_mask_hides_other_rows_padding_and_reads_tree_slots_where_they_are():
    buffers = tree_buffers(preset("chain_3"))  # 4 nodes, each sees its ancestors
    lengths, start = torch.tensor([3, 6]), torch.tensor([6, 6])  # dynamic kind: tree after the longest row
    mask = batch_verify_mask(buffers, lengths, start, torch.float32, 10)[:, 0] == 0  # (2, 4, 10) allowed
    assert mask[0, :, :3].all() and not mask[0, :, 3:6].any()  # row 0: 3 tokens, then stale slots hidden
    assert mask[1, :, :6].all()
    for b in range(2):
        assert torch.equal(mask[b, :, 6:], buffers.ancestor_mask)


def test_batched_candidates_equal_per_row_candidates():
    buffers = tree_buffers(preset("mc_sim_7b_63"))
    topk = torch.randint(0, 1000, (3, 5, 10))
    roots = torch.tensor([7, 8, 9])
    batched = tree_candidates(buffers, roots, topk)
    assert torch.equal(batched, torch.stack([tree_candidates(buffers, r, t) for r, t in zip(roots, topk)]))


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_cache_rows_join_keep_and_leave(kind):
    cache = BatchKV(kind, num_layers=1, capacity=12)
    for n, fill in ((3, 1.0), (5, 2.0)):
        one = StaticKV(1, n)
        one.hf_cache.layers[0].lazy_initialization(torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2))
        layer = one.hf_cache.layers[0]
        layer.keys += fill * torch.arange(1, n + 1).view(1, 1, n, 1)
        layer.values += fill
        one.advance(n)
        cache.join(one)
    assert cache.lengths == [3, 5] and cache.width == 5
    start = cache.tree_start()
    keys = torch.full((2, 1, 4, 2), -1.0)
    keys[:, 0, :, 0] = torch.arange(10, 14)
    cache.hf_cache.layers[0].update(keys, keys.clone())
    cache.keep([3, 5], start, [torch.tensor([0, 2]), torch.tensor([0])])
    assert cache.lengths == [5, 6]
    k = cache.hf_cache.layers[0].keys
    assert k[0, 0, :5, 0].tolist() == [1.0, 2.0, 3.0, 10.0, 12.0]
    assert k[1, 0, :6, 0].tolist() == [2.0, 4.0, 6.0, 8.0, 10.0, 10.0]
    cache.leave([1])
    assert cache.lengths == [6] and cache.hf_cache.layers[0].keys.shape[0] == 1
    assert cache.hf_cache.layers[0].keys[0, 0, :6, 0].tolist() == [2.0, 4.0, 6.0, 8.0, 10.0, 10.0]
