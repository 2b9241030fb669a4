"""`medusa-typical`: Medusa decoding with typical acceptance at the run's temperature, eps and delta.

Lossy by design: its quality is compared with `hf-sample` (plain sampling) and `medusa-sample`
(lossless tree sampling) at the same temperature. Its option `root` picks the token after each
accepted path: ``argmax`` (default: the official Medusa repo's fast mode, and what every run before
this option measured), ``typical`` (the official non-fast mode: sampled from p_T restricted to
tokens above the typical threshold) or ``sample`` (sampled from p_T, as plain sampling would):
``bench.run --method-option medusa-typical.root=sample``.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.methods.base import EngineMethod, MethodContext, tree_of
from common.errors import WorkbenchError
from medusa.acceptance import TYPICAL_ROOTS, AcceptanceConfig


@dataclass(frozen=True)
class TypicalOptions:
    """How the next root is chosen (`medusa.acceptance.AcceptanceConfig.typical_root`)."""

    root: str = "argmax"

    def __post_init__(self) -> None:
        if self.root not in TYPICAL_ROOTS:
            raise WorkbenchError(f"medusa-typical option root must be one of {', '.join(TYPICAL_ROOTS)}, got {self.root!r}")


class MedusaTypical(EngineMethod):
    name = "medusa-typical"
    greedy = False
    needs_heads = True
    needs_tree = True
    Options = TypicalOptions

    def __init__(self, context: MethodContext, options: TypicalOptions | None = None) -> None:
        options = options if options is not None else TypicalOptions()
        s = context.settings
        if s.temperature <= 0:
            raise WorkbenchError("method medusa-typical needs --temperature > 0 (0 is greedy acceptance: use medusa)")
        acceptance = AcceptanceConfig(s.temperature, s.posterior_threshold, s.posterior_alpha, typical_root=options.root)
        super().__init__(context, options, tree_of(context, self.name), acceptance)
