"""Tiny random models and stand-in proposers for tests and CPU smoke runs (no weights needed).

`tiny_backbone()` builds a 2-layer random Llama (vocab 96) in a second; `OracleProposer` proposes
the model's own future greedy tokens at rank 0 (so long paths are accepted) and random tokens at
other ranks; `RandomProposer` proposes random tokens (so almost nothing is accepted).
"""

from __future__ import annotations

from collections.abc import Sequence

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


def tiny_backbone(seed: int = 0, attn_implementation: str = "sdpa", **overrides) -> Backbone:
    """A random 2-layer Llama in fp32 on CPU, wrapped as a `Backbone` without tokenizer."""
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(**overrides)
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    model.requires_grad_(False)
    return Backbone(model=model, tokenizer=None, name=f"tiny-llama-{seed}")


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


class RandomProposer:
    """Random distinct tokens per head: almost nothing is accepted."""

    def __init__(self, num_heads: int, vocab_size: int, seed: int = 0) -> None:
        self.num_heads = num_heads
        self.vocab_size = vocab_size
        self.gen = torch.Generator().manual_seed(seed)

    def propose(self, hidden: torch.Tensor, token_ids: Sequence[int], top_k: int) -> torch.Tensor:
        rows = [torch.randperm(self.vocab_size, generator=self.gen)[:top_k] for _ in range(self.num_heads)]
        return torch.stack(rows).to(hidden.device)
