"""`medusa`: Medusa decoding with greedy acceptance (lossless) and the run's tree.

The tree comes from `--tree FILE`, `--preset NAME` or `--budget N` (searched from the shipped
accuracy table by `trees.search`), else the shipped default tree.
"""

from __future__ import annotations

from bench.methods.base import EngineMethod, MethodContext
from medusa.acceptance import AcceptanceConfig
from medusa.errors import WorkbenchError


def build(context: MethodContext) -> EngineMethod:
    if context.tree is None:
        raise WorkbenchError("method medusa needs a tree")
    return EngineMethod("medusa", context, context.tree, AcceptanceConfig(temperature=0.0))
