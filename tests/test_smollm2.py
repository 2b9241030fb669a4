"""`slow`: the real SmolLM2 from the installed package; Medusa greedy equals `generate` token for token."""

import pytest

from medusa.decode import DecodeConfig, generate
from medusa.heads import MedusaHeads
from medusa.testing import greedy_reference
from trees.tree import preset

PROMPTS = [
    "Write a haiku about the sea",
    "Explain what a hash table is in two sentences.",
    "List three prime numbers and say why they are prime.",
]


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS)
def test_medusa_greedy_with_untrained_heads_is_lossless(smollm2, prompt):
    heads = MedusaHeads.for_backbone(smollm2)  # untrained: every head is the base LM head
    ids = smollm2.chat_ids(prompt)
    ref = greedy_reference(smollm2, ids, 64)
    out = generate(smollm2, heads, preset("mc_sim_7b_63"), ids, DecodeConfig(max_new_tokens=64))
    assert out.output_ids == ref
    assert out.mean_accepted_length >= 1.0
