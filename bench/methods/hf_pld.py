"""`hf-pld`: transformers prompt-lookup decoding, the training-free speculative peer (greedy).

Draft tokens are copied from an n-gram match in the prompt (`prompt_lookup_num_tokens` of them,
matching up to `max_matching_ngram_size` tokens) and verified by the model in one forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.methods.base import MethodContext, MethodOutput, hf_generate


class HFPromptLookup:
    name = "hf-pld"
    greedy = True

    def __init__(self, context: MethodContext) -> None:
        self.backbone = context.backbone
        self.num_tokens = context.settings.pld_tokens
        self.max_ngram = context.settings.pld_max_ngram

    def describe(self) -> dict[str, Any]:
        return {"temperature": 0.0, "pld_tokens": self.num_tokens}

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, seed: int) -> MethodOutput:
        ids = hf_generate(self.backbone, prompt_ids, max_new_tokens, do_sample=False,
                          prompt_lookup_num_tokens=self.num_tokens, max_matching_ngram_size=self.max_ngram)
        return MethodOutput(ids)


def build(context: MethodContext) -> HFPromptLookup:
    return HFPromptLookup(context)
