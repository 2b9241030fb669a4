"""Tiny random models and stand-in proposers for tests and CPU smoke runs (no weights needed).

`tiny_backbone()` builds a 2-layer random Llama (vocab 96) in a second; `tiny_backbone(family=...)`
builds the same size of another family transformers ships (`FAMILIES`: Qwen2 with a sliding layer,
Mistral with a sliding window, Gemma 3 with mixed local/global layers, Phi-3 with fused QKV, ...),
windows of `TINY_WINDOW` tokens so that short tests cross them. `save_tiny_model(folder)` writes
one with a small word-level tokenizer, a folder `--backbone` accepts (CLI tests). `OracleProposer`
proposes the model's own future greedy tokens at rank 0 (so long paths are accepted) and random
tokens at other ranks (`BatchOracleProposer`: one reference per request, for batched decoding);
`RandomProposer` proposes random tokens (so almost nothing is accepted).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medusa.backbone import Backbone


def tiny_llama_config(vocab_size: int = 96, hidden_size: int = 32, layers: int = 2, **overrides):
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=vocab_size - 1,
        bos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


TINY_WINDOW = 8

# family -> (transformers config class, model class, settings that make it that family's kind).
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    # q/k/v biases; layer 0 full attention, layer 1 a sliding window (one mask per layer type)
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              {"use_sliding_window": True, "sliding_window": TINY_WINDOW, "max_window_layers": 1}),
    # one sliding window on every layer (a single mask)
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": TINY_WINDOW}),
    # local (sliding) and global layers, q/k norms, scaled embeddings, tied LM head
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               {"sliding_window": TINY_WINDOW, "layer_types": ["sliding_attention", "full_attention"],
                "head_dim": 8, "query_pre_attn_scalar": 8, "tie_word_embeddings": True}),
    # fused qkv_proj and gate_up_proj
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    # q/k norms
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}),
    # fused query_key_value, partial rotary, parallel residual, LayerNorm with biases
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {"rotary_pct": 0.5}),
}


def tiny_config(family: str = "llama", vocab_size: int = 96, hidden_size: int = 32, layers: int = 2, **overrides):
    """The config of a tiny random model of `family` (a key of `FAMILIES`)."""
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r} (known: {', '.join(FAMILIES)})")
    config_cls, _, settings = FAMILIES[family]
    if family == "llama":
        return tiny_llama_config(vocab_size, hidden_size, layers, **overrides)
    base = tiny_llama_config(vocab_size, hidden_size, layers).to_dict()
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "eos_token_id", "bos_token_id", "pad_token_id",
            "tie_word_embeddings")
    kw = {k: base[k] for k in keep}
    kw.update(settings)
    kw.update(overrides)
    return getattr(transformers, config_cls)(**kw)


def tiny_backbone(seed: int = 0, attn_implementation: str = "sdpa", family: str = "llama", **overrides) -> Backbone:
    """A random 2-layer model of `family` (default Llama) in fp32 on CPU, as a `Backbone` without tokenizer."""
    import transformers

    config = tiny_config(family, **overrides)
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = getattr(transformers, FAMILIES[family][1])(config).eval()
    model.requires_grad_(False)
    return Backbone(model=model, tokenizer=None, name=f"tiny-{family.replace('_', '-')}-{seed}")


def tiny_tokenizer(vocab_size: int = 96):
    """A word-level tokenizer over `vocab_size` made-up words (`w0` ... ), whitespace-split, no network."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, **{f"w{i}": i for i in range(1, vocab_size - 1)}, "</s>": vocab_size - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<pad>")


def save_tiny_model(folder: str | os.PathLike, family: str = "llama", seed: int = 0, **overrides) -> Path:
    """Write a tiny random model of `family` and its tokenizer as a transformers folder (`--backbone FOLDER`)."""
    bb = tiny_backbone(seed, family=family, **overrides)
    folder = Path(folder)
    bb.model.save_pretrained(folder)
    tiny_tokenizer(bb.vocab_size).save_pretrained(folder)
    return folder


def greedy_reference(backbone: Backbone, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """transformers `generate(do_sample=False)` new tokens, the lossless reference."""
    ids = torch.tensor([list(prompt_ids)], device=backbone.device)
    out = backbone.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=backbone.config.pad_token_id,
    )
    return out[0, ids.shape[1] :].tolist()


class OracleProposer:
    """Knows the greedy continuation; puts the true future tokens at rank 0 of each head."""

    def __init__(self, reference_ids: Sequence[int], num_heads: int, vocab_size: int, seed: int = 0) -> None:
        self.reference = list(reference_ids)  # prompt + greedy continuation
        self.num_heads = num_heads
        self.vocab_size = vocab_size
        self.gen = torch.Generator().manual_seed(seed)

    def propose(self, hidden: torch.Tensor, token_ids: Sequence[int], top_k: int) -> torch.Tensor:
        out = torch.randperm(self.vocab_size, generator=self.gen)[: self.num_heads * top_k]
        out = out.view(self.num_heads, top_k).clone()
        n = len(token_ids)  # token_ids ends with the pending root; head k predicts n + k - 1
        for k in range(self.num_heads):
            pos = n + k
            if pos < len(self.reference):
                true = self.reference[pos]
                row = out[k]
                row[row == true] = row[0].clone()
                row[0] = true
        return out.to(hidden.device)

    def propose_scored(self, hidden: torch.Tensor, token_ids: Sequence[int], top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`propose` with made-up probabilities falling with rank (1/2, 1/4, ...), for per-step trees."""
        ids = self.propose(hidden, token_ids, top_k)
        probs = 0.5 ** torch.arange(1, top_k + 1, dtype=torch.float32)
        return ids, probs.expand(self.num_heads, top_k).clone().to(hidden.device)


class BatchOracleProposer(OracleProposer):
    """`OracleProposer` for several requests at once: each row reads the reference it continues."""

    def __init__(self, references: Sequence[Sequence[int]], num_heads: int, vocab_size: int, seed: int = 0) -> None:
        super().__init__([], num_heads, vocab_size, seed)
        self.references = [list(r) for r in references]

    def propose(self, hidden: torch.Tensor, token_ids: Sequence[int], top_k: int) -> torch.Tensor:
        n = len(token_ids)
        self.reference = next((r for r in self.references if r[:n] == list(token_ids)[: len(r)]), [])
        return super().propose(hidden, token_ids, top_k)


class RandomProposer:
    """Random distinct tokens per head: almost nothing is accepted."""

    def __init__(self, num_heads: int, vocab_size: int, seed: int = 0) -> None:
        self.num_heads = num_heads
        self.vocab_size = vocab_size
        self.gen = torch.Generator().manual_seed(seed)

    def propose(self, hidden: torch.Tensor, token_ids: Sequence[int], top_k: int) -> torch.Tensor:
        rows = [torch.randperm(self.vocab_size, generator=self.gen)[:top_k] for _ in range(self.num_heads)]
        return torch.stack(rows).to(hidden.device)
