"""`hf-pld`: transformers prompt-lookup decoding, the training-free speculative peer (greedy).

Draft tokens are copied from an n-gram match in the prompt (`num_tokens` of them, matching up to
`max_ngram` tokens) and verified by the model in one forward. Set them with
``bench.run --method-option hf-pld.num_tokens=10 --method-option hf-pld.max_ngram=2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.methods.base import Method, MethodOutput, hf_generate
from common.errors import WorkbenchError


@dataclass(frozen=True)
class PLDOptions:
    """transformers' `prompt_lookup_num_tokens` and `max_matching_ngram_size`."""

    num_tokens: int = 10
    max_ngram: int = 2

    def __post_init__(self) -> None:
        if self.num_tokens < 1 or self.max_ngram < 1:
            raise WorkbenchError(f"hf-pld options num_tokens and max_ngram must be >= 1, got {self}")


class HFPromptLookup(Method):
    name = "hf-pld"
    greedy = True
    Options = PLDOptions

    def describe(self) -> dict[str, Any]:
        return {"temperature": 0.0}

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, seed: int) -> MethodOutput:
        ids = hf_generate(self.backbone, prompt_ids, max_new_tokens, do_sample=False,
                          prompt_lookup_num_tokens=self.options.num_tokens,
                          max_matching_ngram_size=self.options.max_ngram)
        return MethodOutput(ids)
