"""`medusa-typical`: Medusa decoding with typical acceptance at the run's temperature, eps and delta.

Lossy by design: its quality is compared with `hf-sample` at the same temperature.
"""

from __future__ import annotations

from bench.methods.base import EngineMethod, MethodContext
from medusa.acceptance import AcceptanceConfig
from medusa.errors import WorkbenchError


def build(context: MethodContext) -> EngineMethod:
    s = context.settings
    if s.temperature <= 0:
        raise WorkbenchError("method medusa-typical needs --temperature > 0 (0 is greedy acceptance: use medusa)")
    if context.tree is None:
        raise WorkbenchError("method medusa-typical needs a tree")
    acceptance = AcceptanceConfig(s.temperature, s.posterior_threshold, s.posterior_alpha)
    return EngineMethod("medusa-typical", context, context.tree, acceptance)
