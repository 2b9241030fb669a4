"""Trees to compare a searched tree with: the best dense tree and the validation set at one budget.

`best_dense` finds the dense tree (same width under every node of a depth, `trees.tree.dense`)
that an acceptance model predicts best within a node budget, by exhaustive search over widths.
`validation_trees` lists what `bench.validate` decodes at one budget: the greedy and empirical
searched trees, any given trees, the paper's `mc_sim_7b_63` (when the heads and ranks allow it),
the best dense tree and the top-1 chain of all heads. Model-free: it reads fitted models only.

Usage::

    from trees.baselines import best_dense, validation_trees
    best_dense(64, inputs.stats, num_heads=4, top_r=10)
    [(kind, tree.name) for kind, tree in validation_trees(inputs, 64)]
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from trees.acceptance_model import Marginals, PathStats, expected_tokens
from trees.best_first import search_tree
from trees.inputs import AccuracyInputs
from trees.tree import Tree, chain, dense, preset


def best_dense(node_budget: int, model: Marginals | PathStats, num_heads: int, top_r: int) -> Tree | None:
    """The dense tree with at most `node_budget` nodes that the model predicts best; None if not
    even a single node fits."""
    best: tuple[float, Tree] | None = None
    for depth in range(1, num_heads + 1):
        for widths in itertools.product(range(1, top_r + 1), repeat=depth):
            n, w = 0, 1
            for x in widths:
                w *= x
                n += w
            if n + 1 > node_budget:
                continue
            tree = dense(list(widths))
            score = expected_tokens(tree, model)
            if best is None or score > best[0] + 1e-12:
                best = (score, tree)
    return best[1] if best else None


def validation_trees(
    inputs: AccuracyInputs, node_budget: int, extra: Sequence[Tree] = ()
) -> list[tuple[str, Tree]]:
    """(kind, tree) pairs: searched trees, given trees, presets of the same budget."""
    m, stats = inputs.marginals, inputs.stats
    out: list[tuple[str, Tree]] = [("greedy", search_tree("greedy", node_budget, m, stats).tree)]
    if stats is not None:
        out.append(("empirical", search_tree("empirical", node_budget, m, stats).tree))
    out.extend(("given", t) for t in extra)
    mc = preset("mc_sim_7b_63")
    if mc.node_budget <= node_budget and mc.depth <= m.num_heads and mc.top_k <= m.top_r:
        out.append(("preset", mc))
    dn = best_dense(node_budget, stats if stats is not None else m, m.num_heads, m.top_r)
    if dn is not None:
        out.append(("dense", dn))
    out.append(("chain", chain(m.num_heads)))
    return out
