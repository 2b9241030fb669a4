"""`medusa-typical`: Medusa decoding with typical acceptance at the run's temperature, eps and delta.

Lossy by design: its quality is compared with `hf-sample` at the same temperature.
"""

from __future__ import annotations

from typing import Any

from bench.methods.base import EngineMethod, MethodContext, tree_of
from common.errors import WorkbenchError
from medusa.acceptance import AcceptanceConfig


class MedusaTypical(EngineMethod):
    name = "medusa-typical"
    greedy = False
    needs_heads = True
    needs_tree = True

    def __init__(self, context: MethodContext, options: Any = None) -> None:
        s = context.settings
        if s.temperature <= 0:
            raise WorkbenchError("method medusa-typical needs --temperature > 0 (0 is greedy acceptance: use medusa)")
        acceptance = AcceptanceConfig(s.temperature, s.posterior_threshold, s.posterior_alpha)
        super().__init__(context, options, tree_of(context, self.name), acceptance)
