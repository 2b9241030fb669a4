"""`medusa-dynamic`: Medusa with a tree rebuilt every step from the heads' calibrated confidence.

Each step keeps the `budget` nodes of highest estimated path acceptance among the heads' top-k
(`medusa.policy.DynamicPolicy`), the heads' softmax probabilities mapped to acceptance
probabilities by the heads' calibrated confidence map (`confidence.csv`, written by
`python -m bench.calibrate --fresh`; the committed calibration of the heads, else the scratch one,
else `--method-option medusa-dynamic.confidence=FILE`). Greedy acceptance: lossless.

    python -m bench.run --methods hf-greedy,medusa,medusa-dynamic --method-option medusa-dynamic.budget=16
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.methods.base import EngineMethod, MethodContext, heads_folder
from common.errors import WorkbenchError
from common.paths import calibration_dir, committed_or_scratch, scratch_calibration_dir
from medusa.acceptance import AcceptanceConfig
from medusa.policy import DynamicPolicy
from trees.confidence import load_confidence
from trees.dynamic import DynamicConfig


@dataclass(frozen=True)
class DynamicOptions:
    """Node budget per step, candidates per head, and the confidence map ("" = the heads' calibration)."""

    budget: int = 16
    top_k: int = 10
    confidence: str = ""

    def __post_init__(self) -> None:
        if self.budget < 1 or self.top_k < 1:
            raise WorkbenchError(f"medusa-dynamic options budget and top_k must be >= 1, got {self.budget}, {self.top_k}")


def confidence_source(heads_name: str, option: str) -> Path:
    """The confidence table a dynamic method reads: the option's file, else the heads' calibration folder."""
    if option:
        return Path(option)
    name = heads_folder(heads_name).name
    return committed_or_scratch(calibration_dir(name), scratch_calibration_dir(name))


def dynamic_policy(context: MethodContext, options: DynamicOptions) -> DynamicPolicy:
    if context.heads is None:
        raise WorkbenchError("medusa-dynamic needs Medusa heads but none were loaded")
    cmap = load_confidence(confidence_source(context.heads_name, options.confidence))
    return DynamicPolicy(cmap, DynamicConfig(budget=options.budget), top_k=options.top_k,
                         device=context.backbone.device, num_heads=context.heads.num_heads)


class MedusaDynamic(EngineMethod):
    name = "medusa-dynamic"
    greedy = True
    needs_heads = True
    Options = DynamicOptions

    def __init__(self, context: MethodContext, options: Any = None) -> None:
        options = options if options is not None else DynamicOptions()
        super().__init__(context, options, dynamic_policy(context, options), AcceptanceConfig(rule="greedy"))
