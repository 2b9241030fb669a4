"""Decoding engine on a tiny random Llama: tree logits, losslessness, KV compaction, bad input."""

import pytest
import torch

from common.errors import WorkbenchError
from medusa.acceptance import AcceptanceConfig
from medusa.decode import DecodeConfig, cache_kwarg, generate
from medusa.kv_cache import make_cache
from medusa.testing import OracleProposer, RandomProposer, greedy_reference, tiny_backbone
from medusa.tree_attention import causal_mask, tree_buffers, tree_candidates, verify_attention_mask
from trees.tree import Tree, chain, dense, preset

PROMPT = [1, 5, 7, 9, 11, 3, 17, 2]
TREES = [preset("root"), chain(4), dense([3, 2]), Tree.from_paths([[0], [1], [0, 0], [0, 0, 0], [1, 0]]),
         preset("mc_sim_7b_63")]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("cache_kind", ["static", "dynamic"])
def test_tree_forward_logits_equal_path_forward(attn, cache_kind):
    bb = tiny_backbone(1, attn_implementation=attn)
    model, decoder = bb.model, bb.model.base_model
    tree = Tree.from_paths([[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 1, 0]])
    buf = tree_buffers(tree)
    gen = torch.Generator().manual_seed(0)
    head_topk = torch.randint(0, 96, (3, 3), generator=gen)
    candidates = tree_candidates(buf, 42, head_topk)
    with torch.inference_mode():
        cache = make_cache(cache_kind, model, len(PROMPT) + buf.num_nodes)
        arg = cache_kwarg(decoder)
        ids = torch.tensor([PROMPT])
        decoder(input_ids=ids, position_ids=torch.arange(len(PROMPT))[None],
                attention_mask=causal_mask(len(PROMPT), cache.mask_width(len(PROMPT)), torch.float32, "cpu"),
                **{arg: cache.hf_cache})
        cache.advance(len(PROMPT))
        past = cache.length
        h = decoder(input_ids=candidates[None], position_ids=(past + buf.depth)[None],
                    attention_mask=verify_attention_mask(buf, past, torch.float32, cache.mask_width(buf.num_nodes)),
                    **{arg: cache.hf_cache}).last_hidden_state[0]
        tree_logits = model.get_output_embeddings()(h)
        for node in range(buf.num_nodes):
            path = []
            j = node
            while j >= 0:
                path.append(int(candidates[j]))
                j = int(buf.parent[j])
            seq = torch.tensor([PROMPT + path[::-1]])
            ref = model(seq).logits[0, -1]
            torch.testing.assert_close(tree_logits[node], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tree", TREES, ids=lambda t: t.name)
@pytest.mark.parametrize("cache_kind", ["static", "dynamic"])
def test_greedy_is_lossless_with_oracle_and_random_heads(tiny, tree, cache_kind):
    n = 48
    ref = greedy_reference(tiny, PROMPT, n)
    config = DecodeConfig(max_new_tokens=n, stop_on_eos=False, cache=cache_kind)
    oracle = generate(tiny, OracleProposer(PROMPT + ref, 4, 96), tree, PROMPT, config)
    assert oracle.output_ids == ref
    rand = generate(tiny, RandomProposer(4, 96), tree, PROMPT, config)
    assert rand.output_ids == ref
    if tree.depth >= 3:
        # the oracle's rank-0 chain is always accepted: long steps, so few of them
        assert oracle.mean_accepted_length >= min(tree.depth, 4)
        assert rand.mean_accepted_length < 1.5
    assert sum(s.accepted_length for s in oracle.steps) + 1 >= n


def test_lossless_stops_at_eos_like_generate():
    bb = tiny_backbone(3, eos_token_id=None)
    ref = greedy_reference(bb, PROMPT, 30)
    eos = ref[7]  # plant an EOS in the middle of the greedy continuation
    bb.model.config.eos_token_id = eos
    bb.model.generation_config.eos_token_id = eos
    ref_eos = greedy_reference(bb, PROMPT, 30)
    assert ref_eos[-1] == eos and len(ref_eos) < 30
    out = generate(bb, OracleProposer(PROMPT + ref, 4, 96), preset("mc_sim_7b_63"), PROMPT, DecodeConfig(max_new_tokens=30))
    assert out.output_ids == ref_eos and out.stop_reason == "eos"


@pytest.mark.parametrize("cache_kind", ["static", "dynamic"])
def test_kv_cache_after_steps_equals_plain_forward(tiny, cache_kind):
    ref = greedy_reference(tiny, PROMPT, 30)
    snapshots = []

    def grab(cache, committed):
        layer = cache.hf_cache.layers[0]
        snapshots.append((layer.keys[:, :, : cache.length].clone(), list(committed)))

    generate(tiny, OracleProposer(PROMPT + ref, 4, 96), preset("mc_sim_7b_63"), PROMPT,
             DecodeConfig(max_new_tokens=30, stop_on_eos=False, cache=cache_kind), on_step=grab)
    assert len(snapshots) >= 3
    for keys, committed in snapshots:
        assert keys.shape[2] == len(committed)
        with torch.inference_mode():
            plain = tiny.model(torch.tensor([committed]), use_cache=True).past_key_values
        torch.testing.assert_close(keys, plain.layers[0].keys, atol=1e-5, rtol=1e-5)


def test_typical_acceptance_runs_and_reports_steps(tiny):
    ref = greedy_reference(tiny, PROMPT, 20)
    cfg = DecodeConfig(max_new_tokens=20, stop_on_eos=False, acceptance=AcceptanceConfig(temperature=0.7))
    out = generate(tiny, OracleProposer(PROMPT + ref, 4, 96), preset("mc_sim_7b_63"), PROMPT, cfg)
    assert out.new_tokens == 20
    assert all(s.accepted_length >= 1 for s in out.steps)
    assert all(s.heads_s >= 0 and s.verify_s > 0 and s.bookkeeping_s >= 0 for s in out.steps)


def test_bad_requests(tiny):
    with pytest.raises(WorkbenchError, match="empty"):
        generate(tiny, RandomProposer(4, 96), chain(2), [], DecodeConfig(max_new_tokens=4))
    with pytest.raises(WorkbenchError, match="max_new_tokens"):
        DecodeConfig(max_new_tokens=0)
    with pytest.raises(WorkbenchError, match="only 4"):
        generate(tiny, RandomProposer(4, 96), chain(5), PROMPT, DecodeConfig(max_new_tokens=4))
    with pytest.raises(WorkbenchError, match="context"):
        generate(tiny, RandomProposer(4, 96), chain(2), list(range(90)) * 6, DecodeConfig(max_new_tokens=4))
    with pytest.raises(WorkbenchError, match="no heads"):
        generate(tiny, None, chain(2), PROMPT, DecodeConfig(max_new_tokens=4))


def test_compiled_and_static_paths_match_eager_dynamic():
    bb = tiny_backbone(2)
    ref = greedy_reference(bb, PROMPT, 24)
    outs = {}
    for name, cfg in {
        "dynamic": DecodeConfig(max_new_tokens=24, stop_on_eos=False, cache="dynamic"),
        "static": DecodeConfig(max_new_tokens=24, stop_on_eos=False, cache="static"),
        "compiled": DecodeConfig(max_new_tokens=24, stop_on_eos=False, compile=True, compile_bucket=64),
    }.items():
        outs[name] = generate(bb, OracleProposer(PROMPT + ref, 4, 96), chain(3), PROMPT, cfg).output_ids
    assert outs["dynamic"] == outs["static"] == outs["compiled"] == ref
