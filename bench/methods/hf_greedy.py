"""`hf-greedy`: transformers `generate(do_sample=False)`, the baseline users have today.

Every greedy method's output is compared with this one token for token (`bench.summarize.REFERENCE`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.methods.base import Method, MethodOutput, hf_generate, hf_generate_batch
from medusa.batch import RequestError


class HFGreedy(Method):
    name = "hf-greedy"
    greedy = True

    def describe(self) -> dict[str, Any]:
        return {"temperature": 0.0}

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, seed: int) -> MethodOutput:
        return MethodOutput(hf_generate(self.backbone, prompt_ids, max_new_tokens, do_sample=False))

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, seeds: Sequence[int],
                       batch_size: int) -> list[MethodOutput | RequestError]:
        del seeds  # greedy
        return list(hf_generate_batch(self.backbone, prompts, max_new_tokens, batch_size, do_sample=False))
