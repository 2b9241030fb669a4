"""The one canonical candidate-tree type, its validation, JSON form and presets.

A Medusa tree is a set of *paths* in the `medusa_choices` format of the official repo and
TensorRT-LLM: each path lists the 0-based rank taken at each depth, so ``(0, 1)`` means "top-1
token of head 1, then top-2 token of head 2". The root (the base model's own next token) is
implicit. Node 0 is the root; node ``i >= 1`` is ``paths[i - 1]`` once the paths are sorted by
(length, ranks), the order the official code uses.

Node budget = tokens verified per step, root included, so ``mc_sim_7b_63`` (63 paths) has
``node_budget == 64``.

Usage::

    from trees.tree import Tree, preset, chain, dense
    tree = preset("mc_sim_7b_63")
    tree.node_budget, tree.depth, tree.parents()
    tree.save("results/trees/mine.json"); Tree.load("results/trees/mine.json")
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import WorkbenchError
from common.io import atomic_write
from common.paths import DEFAULT_TREE_FILE

Path_ = tuple[int, ...]


class TreeError(WorkbenchError):
    """An invalid tree (not prefix-closed, duplicated path, too deep, rank too large...)."""


def _canonical(paths: Iterable[Sequence[int]]) -> tuple[Path_, ...]:
    return tuple(sorted((tuple(int(r) for r in p) for p in paths), key=lambda p: (len(p), p)))


def validate_paths(
    paths: Sequence[Path_], num_heads: int | None = None, top_k: int | None = None
) -> None:
    """Raise `TreeError` unless `paths` form a valid tree (optionally for K heads and top_k)."""
    seen: set[Path_] = set()
    for p in paths:
        if len(p) == 0:
            raise TreeError("tree path is empty: the root is implicit and must not be listed")
        if any(r < 0 for r in p):
            raise TreeError(f"tree path {list(p)} has a negative rank")
        if p in seen:
            raise TreeError(f"tree path {list(p)} appears twice")
        seen.add(p)
    for p in paths:
        if len(p) > 1 and p[:-1] not in seen:
            raise TreeError(f"tree is not prefix-closed: {list(p)} is listed but its parent {list(p[:-1])} is not")
    if num_heads is not None:
        deep = [p for p in paths if len(p) > num_heads]
        if deep:
            raise TreeError(f"tree depth {max(map(len, deep))} exceeds the number of heads ({num_heads})")
    if top_k is not None:
        wide = [p for p in paths if max(p) >= top_k]
        if wide:
            raise TreeError(f"tree uses rank {max(max(p) for p in wide)} but top_k is {top_k} (ranks are 0-based)")


@dataclass(frozen=True)
class Tree:
    """A validated, canonically ordered candidate tree. Build with `Tree.from_paths`."""

    paths: tuple[Path_, ...]
    name: str = "tree"
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_paths(
        cls,
        paths: Iterable[Sequence[int]],
        name: str = "tree",
        meta: dict[str, Any] | None = None,
        num_heads: int | None = None,
        top_k: int | None = None,
    ) -> Tree:
        raw = [tuple(int(r) for r in p) for p in paths]
        validate_paths(raw, num_heads, top_k)
        return cls(paths=_canonical(raw), name=name, meta=dict(meta or {}))

    # ---- shape -------------------------------------------------------------------------
    @property
    def node_budget(self) -> int:
        """Tokens verified per step, root included."""
        return len(self.paths) + 1

    @property
    def depth(self) -> int:
        """Longest path length (number of heads the tree reads from); 0 for a root-only tree."""
        return max((len(p) for p in self.paths), default=0)

    @property
    def top_k(self) -> int:
        """Smallest per-head top-k list this tree needs (max rank + 1); 0 for a root-only tree."""
        return max((max(p) + 1 for p in self.paths), default=0)

    def nodes_per_depth(self) -> list[int]:
        """Number of nodes at depth 1..depth (the root, depth 0, is not listed)."""
        return [sum(1 for p in self.paths if len(p) == d) for d in range(1, self.depth + 1)]

    def width_per_depth(self) -> list[int]:
        """Largest rank used at each depth, plus one (the top-k each head must supply)."""
        return [max(p[-1] for p in self.paths if len(p) == d) + 1 for d in range(1, self.depth + 1)]

    def parents(self) -> list[int]:
        """Parent node index per node (root first, its parent is -1)."""
        index = {p: i + 1 for i, p in enumerate(self.paths)}
        return [-1] + [index[p[:-1]] if len(p) > 1 else 0 for p in self.paths]

    def leaves(self) -> list[int]:
        """Node indices with no children, in node order (the root alone is a leaf of the empty tree)."""
        has_child = set(self.parents()[1:])
        return [i for i in range(self.node_budget) if i not in has_child]

    def check_fits(self, num_heads: int, top_k: int | None = None) -> None:
        """Raise `TreeError` if this tree needs more heads (or a larger top-k) than available."""
        validate_paths(self.paths, num_heads, top_k)

    # ---- serialisation -----------------------------------------------------------------
    def medusa_choices(self) -> list[list[int]]:
        """The path list accepted by the official Medusa repo and TensorRT-LLM."""
        return [list(p) for p in self.paths]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "node_budget": self.node_budget,
            "depth": self.depth,
            "paths": self.medusa_choices(),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tree:
        if not isinstance(d, dict) or "paths" not in d:
            raise TreeError("tree JSON must be an object with a 'paths' list (or a bare list of paths)")
        paths = d["paths"]
        if not isinstance(paths, list) or not all(
            isinstance(p, list) and all(isinstance(r, int) for r in p) for p in paths
        ):
            raise TreeError("tree 'paths' must be a list of lists of integer ranks")
        tree = cls.from_paths(paths, name=str(d.get("name", "tree")), meta=d.get("meta") or {})
        if "node_budget" in d and d["node_budget"] != tree.node_budget:
            raise TreeError(f"tree JSON says node_budget {d['node_budget']} but its paths give {tree.node_budget}")
        return tree

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tree as JSON atomically (a crash never leaves half a file)."""
        return atomic_write(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tree:
        """Read a tree JSON: either `to_dict()`'s object or a bare `medusa_choices` list.

        A file with no paths is refused (an empty list `[]` would silently decode with the root
        alone, i.e. plain decoding), unless it says ``"node_budget": 1`` as `save` writes for a
        searched root-only tree; the root-only tree is also the preset `root`.
        """
        path = Path(path)
        if not path.is_file():
            raise TreeError(f"tree file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TreeError(f"tree file {path} is not valid JSON: {e}") from None
        if isinstance(data, list):
            data = {"name": path.stem, "paths": data}
        tree = cls.from_dict(data)
        if not tree.paths and data.get("node_budget") != 1:
            raise TreeError(f"tree file {path} lists no paths (it would verify the root alone, i.e. plain "
                            "decoding); give candidate paths, or use --preset root for that on purpose")
        return tree


# ---- builders and presets --------------------------------------------------------------
def chain(depth: int) -> Tree:
    """The top-1 chain of `depth` heads (node budget depth + 1)."""
    if depth < 0:
        raise TreeError(f"chain depth must be >= 0, got {depth}")
    return Tree.from_paths([(0,) * d for d in range(1, depth + 1)], name=f"chain_{depth}")


def dense(widths: Sequence[int]) -> Tree:
    """The full tree taking the top-`widths[d]` tokens of head d+1 under every node of depth d."""
    if any(w < 1 for w in widths):
        raise TreeError(f"dense widths must all be >= 1, got {list(widths)}")
    paths: list[Path_] = []
    for d in range(1, len(widths) + 1):
        paths.extend(itertools.product(*(range(w) for w in widths[:d])))
    return Tree.from_paths(paths, name="dense_" + "x".join(map(str, widths)))


# The paper's 64-node tree (Medusa repo, medusa/model/medusa_choices.py), kept as data.
MC_SIM_7B_63: tuple[Path_, ...] = _canonical([
    [0], [0, 0], [1], [0, 1], [2], [0, 0, 0], [1, 0], [0, 2], [3], [0, 3], [4], [0, 4], [2, 0],
    [0, 5], [0, 0, 1], [5], [0, 6], [6], [0, 7], [0, 1, 0], [1, 1], [7], [0, 8], [0, 0, 2], [3, 0],
    [0, 9], [8], [9], [1, 0, 0], [0, 2, 0], [1, 2], [0, 0, 3], [4, 0], [2, 1], [0, 0, 4], [0, 0, 5],
    [0, 0, 0, 0], [0, 1, 1], [0, 0, 6], [0, 3, 0], [5, 0], [1, 3], [0, 0, 7], [0, 0, 8], [0, 0, 9],
    [6, 0], [0, 4, 0], [1, 4], [7, 0], [0, 1, 2], [2, 0, 0], [3, 1], [2, 2], [8, 0], [0, 5, 0],
    [1, 5], [1, 0, 1], [0, 2, 1], [9, 0], [0, 6, 0], [0, 0, 0, 1], [1, 6], [0, 7, 0],
])

PRESETS: dict[str, Tree] = {
    "mc_sim_7b_63": Tree.from_paths(MC_SIM_7B_63, name="mc_sim_7b_63", meta={"source": "Medusa paper"}),
    "root": Tree.from_paths([], name="root"),
}


def preset(name: str) -> Tree:
    """A named tree: `mc_sim_7b_63`, `root` (no candidates), `chain_<d>` or `dense_<w1>x<w2>...`."""
    if name in PRESETS:
        return PRESETS[name]
    try:
        if name.startswith("chain_"):
            return chain(int(name.removeprefix("chain_")))
        if name.startswith("dense_"):
            return dense([int(w) for w in name.removeprefix("dense_").split("x")])
    except ValueError:
        pass
    known = ", ".join(sorted(PRESETS)) + ", chain_<depth>, dense_<w1>x<w2>..."
    raise TreeError(f"unknown tree preset {name!r} (known: {known})")


def default_tree() -> Tree:
    """The shipped searched tree if present, else the paper's `mc_sim_7b_63`.

    The tree `medusa.generate` and the benchmark use when none is given (written by
    `python -m trees.search --set-default`).
    """
    if DEFAULT_TREE_FILE.is_file():
        return Tree.load(DEFAULT_TREE_FILE)
    return PRESETS["mc_sim_7b_63"]
