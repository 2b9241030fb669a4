"""`medusa-sample`: Medusa decoding with lossless tree sampling at the run's temperature.

Rule "sample" of `medusa.acceptance`: drafted tokens are accepted by rejection sampling against the
base model's distribution and the next token is drawn from the residual, so the output is
distributed exactly as plain sampling (`hf-sample`) at the same temperature: its quality should
match `hf-sample`'s within noise, and it is the lossless reference `medusa-typical` is read against.
Seeded per record (the engine's own generator), so reruns give the same tokens.

Its own options shape the target distribution like transformers' `top_p`/`top_k`:
``bench.run --method-option medusa-sample.top_p=0.9``. `hf-sample` samples without either, so keep
the defaults (off) when comparing the two.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.methods.base import EngineMethod, MethodContext, tree_of
from common.errors import WorkbenchError
from medusa.acceptance import AcceptanceConfig


@dataclass(frozen=True)
class SampleOptions:
    """The nucleus and top-k cut of the target distribution (1.0 / 0: off, as in `hf-sample`)."""

    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise WorkbenchError(f"medusa-sample options need 0 < top_p <= 1 and top_k >= 0, got {self}")


class MedusaSample(EngineMethod):
    name = "medusa-sample"
    greedy = False
    needs_heads = True
    needs_tree = True
    Options = SampleOptions

    def __init__(self, context: MethodContext, options: SampleOptions | None = None) -> None:
        options = options if options is not None else SampleOptions()
        t = context.settings.temperature
        if t <= 0:
            raise WorkbenchError("method medusa-sample needs --temperature > 0 (0 is greedy acceptance: use medusa)")
        acceptance = AcceptanceConfig(t, rule="sample", top_p=options.top_p, top_k=options.top_k)
        super().__init__(context, options, tree_of(context, self.name), acceptance)
