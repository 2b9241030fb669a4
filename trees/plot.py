"""Draw a candidate tree: depth left to right, nodes labelled head/rank, coloured by P(accepted).

Leaves are spread evenly top to bottom and every inner node sits at the mean height of its
children, so the drawing stays readable up to a few hundred nodes. Colours come from an acceptance
model (`trees.acceptance_model`: independence marginals or empirical path statistics).

Usage::

    from trees.plot import plot_tree
    plot_tree(tree, load_path_stats("results/calibration/smollm2-135m-medusa1/paths.csv"), "tree.png")
    python -m trees.search --budget 64 --plot results/figures/tree_64.png
"""

from __future__ import annotations

import os
from pathlib import Path

from common.errors import WorkbenchError
from common.io import atomic_write
from trees.acceptance_model import Marginals, PathStats, node_probabilities
from trees.tree import Tree


def layout(tree: Tree) -> list[tuple[float, float]]:
    """(x = depth, y) per node: leaves evenly spaced in node order, parents centred on children."""
    parents = tree.parents()
    children: dict[int, list[int]] = {i: [] for i in range(tree.node_budget)}
    for i, p in enumerate(parents[1:], start=1):
        children[p].append(i)
    y: dict[int, float] = {}
    next_leaf = [0.0]

    def place(i: int) -> float:
        if not children[i]:
            y[i] = next_leaf[0]
            next_leaf[0] += 1.0
        else:
            y[i] = sum(place(c) for c in children[i]) / len(children[i])
        return y[i]

    place(0)
    depth = [0] + [len(p) for p in tree.paths]
    return [(float(depth[i]), -y[i]) for i in range(tree.node_budget)]


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def check_plot_path(path: str | os.PathLike) -> Path:
    """`path` if its suffix names a format `plot_tree` writes, else one `WorkbenchError` line.

    CLIs call this before any work, so a bad name fails before a tree is written.
    """
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise WorkbenchError(f"plot file must end in {', '.join(PLOT_SUFFIXES[:-1])} or {PLOT_SUFFIXES[-1]}, got {path.name}")
    return path


def plot_tree(tree: Tree, model: Marginals | PathStats, path: str | os.PathLike, title: str | None = None) -> Path:
    """Save a drawing of `tree` to `path` (format from its suffix); returns the path.

    Draws on a bare matplotlib `Figure` (no pyplot), so no process-wide backend or state changes.
    """
    import matplotlib
    from matplotlib import cm, colors
    from matplotlib.figure import Figure

    path = check_plot_path(path)
    pos = layout(tree)
    probs = node_probabilities(tree, model)
    parents = tree.parents()
    leaves = max(1, len(tree.leaves()))
    fig = Figure(figsize=(2.2 + 2.0 * max(tree.depth, 1), 1.0 + 0.28 * leaves))
    ax = fig.subplots()
    norm = colors.Normalize(vmin=0.0, vmax=max(max(probs[1:], default=0.0), 1e-9))
    cmap = matplotlib.colormaps["viridis"]
    for i, p in enumerate(parents):
        if p >= 0:
            ax.plot([pos[p][0], pos[i][0]], [pos[p][1], pos[i][1]], color="0.7", lw=0.8, zorder=1)
    for i, (x, yv) in enumerate(pos):
        if i == 0:
            ax.scatter([x], [yv], s=260, color="0.3", zorder=2)
            ax.annotate("root", (x, yv), ha="center", va="center", fontsize=6, color="white", zorder=3)
            continue
        rank = tree.paths[i - 1][-1]
        ax.scatter([x], [yv], s=260, color=cmap(norm(probs[i])), edgecolors="0.2", linewidths=0.4, zorder=2)
        ax.annotate(f"{len(tree.paths[i - 1])}/{rank}", (x, yv), ha="center", va="center", fontsize=5.5,
                    color="white" if norm(probs[i]) < 0.6 else "black", zorder=3)
    sm = cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, fraction=0.04, pad=0.02, label="P(node accepted)")
    kind = "empirical" if isinstance(model, PathStats) else "independence"
    ax.set_title(title or f"{tree.name}: {tree.node_budget} nodes, labels head/rank0, colour = {kind} model", fontsize=8)
    ax.set_xlabel("depth (head)")
    ax.set_xticks(range(tree.depth + 1))
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=150, format=path.suffix.lower().lstrip(".")))
