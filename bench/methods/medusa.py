"""`medusa`: Medusa decoding with greedy acceptance (lossless) and the run's tree.

The tree comes from `--tree FILE`, `--preset NAME` or `--budget N` (searched from the shipped
accuracy table by `trees.search`), else the shipped default tree. `medusa-compiled` is the same with the verify forward and the heads
compiled (`medusa.compiled`).

Option ``proposal_vocab=N`` (both): the heads propose only among the N most frequent training
targets of the heads folder (`medusa.subvocab`), cutting the heads' projection by V / N; verify and
acceptance are unchanged, so greedy decoding stays lossless.

    python -m bench.run --methods ar-compiled,medusa-compiled --method-option medusa-compiled.proposal_vocab=8192
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.methods.base import EngineMethod, MethodContext, tree_of
from common.errors import WorkbenchError
from medusa.acceptance import AcceptanceConfig


@dataclass(frozen=True)
class MedusaOptions:
    """proposal_vocab: propose from the N most frequent training targets only (0 = the whole vocabulary)."""

    proposal_vocab: int = 0

    def __post_init__(self) -> None:
        if self.proposal_vocab < 0:
            raise WorkbenchError(f"medusa option proposal_vocab must be >= 0, got {self.proposal_vocab}")


class Medusa(EngineMethod):
    name = "medusa"
    greedy = True
    needs_heads = True
    needs_tree = True
    Options = MedusaOptions

    def __init__(self, context: MethodContext, options: Any = None) -> None:
        super().__init__(context, options, tree_of(context, self.name), AcceptanceConfig(rule="greedy"))


class MedusaCompiled(Medusa):
    name = "medusa-compiled"
    compiled = True
