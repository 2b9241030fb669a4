"""`medusa-lookup`: the run's Medusa tree plus a prompt-lookup branch, verified in one forward.

Each step the longest recent n-gram match in prompt + output proposes a chain of up to
`lookup_nodes` tokens (`medusa.lookup`), hung from the root beside the heads' tree and merged
where tokens coincide (`medusa.hybrid`, `medusa.policy.LookupPolicy`); without a match the step
verifies the heads' tree alone. With `dynamic=true` the heads' part is rebuilt per step from
their calibrated confidence (as `medusa-dynamic`). Greedy acceptance: lossless. Compiled (the
run's `--compile`), every step is padded to the full budget with more head candidates
(`HybridConfig.pad`), so the verify compiles once per cache bucket.

    python -m bench.run --methods hf-greedy,hf-pld,medusa,medusa-lookup --method-option medusa-lookup.lookup_nodes=10
    python -m bench.run --compile ... --method-option medusa-lookup.nodes=4 --method-option medusa-lookup.lookup_nodes=2

With ``nodes`` set to the heads' tree size the chain replaces the heads' last paths when it
matches (``HybridConfig.budget``), so a step verifies as many tokens as the static tree does: on a
CPU, where a compiled 5-token verify costs 1.6x a 4-token one, that is the only hybrid that can pay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.methods.base import EngineMethod, MethodContext, tree_of
from bench.methods.medusa import MedusaOptions
from bench.methods.medusa_dynamic import DynamicOptions, dynamic_policy
from common.errors import WorkbenchError
from medusa.acceptance import AcceptanceConfig
from medusa.hybrid import HybridConfig
from medusa.lookup import LookupConfig
from medusa.policy import LookupPolicy, StaticPolicy


@dataclass(frozen=True)
class LookupOptions(MedusaOptions):
    """The lookup chain's nodes and n-gram sizes; the heads' part static (the run's tree) or dynamic;
    `proposal_vocab` as `medusa`'s."""

    lookup_nodes: int = 10
    max_ngram: int = 3
    min_ngram: int = 1
    dynamic: bool = False
    budget: int = 16  # dynamic heads' part only: nodes of the heads' tree
    # Nodes verified per step, root included; 0: the heads' tree plus lookup_nodes. Set to the heads'
    # tree size, a matched chain takes the heads' last paths' places, so the verify (compiled: one
    # shape) costs what the static tree's does.
    nodes: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lookup_nodes < 0:
            raise WorkbenchError(f"medusa-lookup option lookup_nodes must be >= 0, got {self.lookup_nodes}")
        if self.nodes < 0:
            raise WorkbenchError(f"medusa-lookup option nodes must be >= 0 (0: heads' tree + lookup_nodes), got {self.nodes}")
        self.lookup_config()

    def lookup_config(self) -> LookupConfig:
        """The proposer's settings: chains as long as the share they may take (at least 1)."""
        return LookupConfig(max_ngram=self.max_ngram, min_ngram=self.min_ngram, max_chain=max(self.lookup_nodes, 1))

    def nodes_per_step(self, heads_nodes: int) -> int:
        """Nodes verified per step beside a heads' part of `heads_nodes`: `nodes`, else heads + chain."""
        return self.nodes or heads_nodes + self.lookup_nodes

    def dynamic_options(self) -> DynamicOptions:
        """The dynamic heads' part's options (`dynamic=true`)."""
        return DynamicOptions(budget=self.budget)


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
            heads_part = dynamic_policy(context, o.dynamic_options())
        else:
            heads_part = StaticPolicy(tree_of(context, self.name), device)
        # compiled: every step padded to the full budget, so the verify compiles once
        policy = LookupPolicy(heads_part, HybridConfig(budget=o.nodes_per_step(heads_part.node_budget),
                                                       lookup_nodes=o.lookup_nodes, pad=self.compiles(context)),
                              o.lookup_config(), device)
        super().__init__(context, o, policy, AcceptanceConfig(rule="greedy"))
