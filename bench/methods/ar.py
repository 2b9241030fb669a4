"""`ar`: our engine's own one-token-per-step greedy loop (the root-only tree, no heads).

Medusa over `ar` is the algorithmic speedup, with engine overheads identical on both sides;
`ar` over `hf-greedy` is the engine's own speed against transformers' loop. `ar-compiled` is the
same loop with the verify forward compiled (`medusa.compiled`), the baseline `medusa-compiled`
is measured against.
"""

from __future__ import annotations

from typing import Any

from bench.methods.base import EngineMethod, MethodContext
from medusa.acceptance import AcceptanceConfig
from trees.tree import preset


class AR(EngineMethod):
    name = "ar"
    greedy = True

    def __init__(self, context: MethodContext, options: Any = None) -> None:
        super().__init__(context, options, preset("root"), AcceptanceConfig(temperature=0.0))


class ARCompiled(AR):
    name = "ar-compiled"
    compiled = True
