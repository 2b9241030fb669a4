"""`medusa`: Medusa decoding with greedy acceptance (lossless) and the run's tree.

The tree comes from `--tree FILE`, `--preset NAME` or `--budget N` (searched from the shipped
accuracy table by `trees.search`), else the shipped default tree. `medusa-compiled` is the same with the verify forward and the heads
compiled (`medusa.compiled`).
"""

from __future__ import annotations

from typing import Any

from bench.methods.base import EngineMethod, MethodContext, tree_of
from medusa.acceptance import AcceptanceConfig


class Medusa(EngineMethod):
    name = "medusa"
    greedy = True
    needs_heads = True
    needs_tree = True

    def __init__(self, context: MethodContext, options: Any = None) -> None:
        super().__init__(context, options, tree_of(context, self.name), AcceptanceConfig(rule="greedy"))


class MedusaCompiled(Medusa):
    name = "medusa-compiled"
    compiled = True
