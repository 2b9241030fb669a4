"""`hf-sample`: plain transformers sampling at the run's temperature (no top-k, no top-p).

The quality reference for `medusa-typical`: same backbone, same temperature, seeded per record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bench.methods.base import Method, MethodContext, MethodOutput, hf_generate
from common.errors import WorkbenchError


class HFSample(Method):
    name = "hf-sample"
    greedy = False

    def __init__(self, context: MethodContext, options: Any = None) -> None:
        if context.settings.temperature <= 0:
            raise WorkbenchError("method hf-sample needs --temperature > 0")
        super().__init__(context, options)
        self.temperature = context.settings.temperature

    def describe(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, seed: int) -> MethodOutput:
        # transformers samples from the global RNG: seed it per record (same samples in every run)
        # inside fork_rng, so the caller's RNG state is restored afterwards.
        devices = [self.backbone.device] if self.backbone.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            ids = hf_generate(self.backbone, prompt_ids, max_new_tokens, do_sample=True,
                              temperature=self.temperature, top_k=0, top_p=1.0)
        return MethodOutput(ids)
