"""`ar`: our engine's own one-token-per-step greedy loop (the root-only tree, no heads).

Medusa over `ar` is the algorithmic speedup, with engine overheads identical on both sides;
`ar` over `hf-greedy` is the engine's own speed against transformers' loop.
"""

from __future__ import annotations

from bench.methods.base import EngineMethod, MethodContext
from medusa.acceptance import AcceptanceConfig
from trees.tree import preset


def build(context: MethodContext) -> EngineMethod:
    return EngineMethod("ar", context, preset("root"), AcceptanceConfig(temperature=0.0))
