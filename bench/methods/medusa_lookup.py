"""`medusa-lookup`: the run's Medusa tree plus a prompt-lookup branch, verified in one forward.

Each step the longest recent n-gram match in prompt + output proposes a chain of up to
`lookup_nodes` tokens (`medusa.lookup`), hung from the root beside the heads' tree and merged
where tokens coincide (`medusa.hybrid`, `medusa.policy.LookupPolicy`); without a match the step
verifies the heads' tree alone. With `dynamic=true` the heads' part is rebuilt per step from
their calibrated confidence (as `medusa-dynamic`). Greedy acceptance: lossless. Compiled (the
run's `--compile`), every step is padded to the full budget with more head candidates
(`HybridConfig.pad`), so the verify compiles once per cache bucket.

    python -m bench.run --methods hf-greedy,hf-pld,medusa,medusa-lookup --method-option medusa-lookup.lookup_nodes=10
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.methods.base import EngineMethod, MethodContext, tree_of
from bench.methods.medusa_dynamic import DynamicOptions, dynamic_policy
from common.errors import WorkbenchError
from medusa.acceptance import AcceptanceConfig
from medusa.hybrid import HybridConfig
from medusa.lookup import LookupConfig
from medusa.policy import LookupPolicy, StaticPolicy


@dataclass(frozen=True)
class LookupOptions:
    """The lookup chain's nodes and n-gram sizes; the heads' part static (the run's tree) or dynamic."""

    lookup_nodes: int = 10
    max_ngram: int = 3
    min_ngram: int = 1
    dynamic: bool = False
    budget: int = 16  # dynamic heads' part only: nodes of the heads' tree

    def __post_init__(self) -> None:
        if self.lookup_nodes < 0:
            raise WorkbenchError(f"medusa-lookup option lookup_nodes must be >= 0, got {self.lookup_nodes}")
        LookupConfig(max_ngram=self.max_ngram, min_ngram=self.min_ngram, max_chain=max(self.lookup_nodes, 1))


class MedusaLookup(EngineMethod):
    name = "medusa-lookup"
    greedy = True
    needs_heads = True
    needs_tree = True
    Options = LookupOptions

    def __init__(self, context: MethodContext, options: Any = None) -> None:
        o = options if options is not None else LookupOptions()
        device = context.backbone.device
        if o.dynamic:
            heads_part = dynamic_policy(context, DynamicOptions(budget=o.budget))
        else:
            heads_part = StaticPolicy(tree_of(context, self.name), device)
        lookup = LookupConfig(max_ngram=o.max_ngram, min_ngram=o.min_ngram, max_chain=max(o.lookup_nodes, 1))
        # compiled: every step padded to the full budget, so the verify compiles once
        compile_ = context.settings.compile or self.compiled
        policy = LookupPolicy(heads_part, HybridConfig(budget=heads_part.node_budget + o.lookup_nodes,
                                                       lookup_nodes=o.lookup_nodes, pad=compile_), lookup, device)
        super().__init__(context, o, policy, AcceptanceConfig(rule="greedy"))
