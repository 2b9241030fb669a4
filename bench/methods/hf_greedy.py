"""`hf-greedy`: transformers `generate(do_sample=False)`, the baseline users have today.

Every greedy method's output is compared with this one token for token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.methods.base import MethodContext, MethodOutput, hf_generate


class HFGreedy:
    name = "hf-greedy"
    greedy = True

    def __init__(self, context: MethodContext) -> None:
        self.backbone = context.backbone

    def describe(self) -> dict[str, Any]:
        return {"temperature": 0.0}

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, seed: int) -> MethodOutput:
        return MethodOutput(hf_generate(self.backbone, prompt_ids, max_new_tokens, do_sample=False))


def build(context: MethodContext) -> HFGreedy:
    return HFGreedy(context)
