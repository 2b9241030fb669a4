"""trees: candidate trees as data, calibration, acceptance models and tree search."""

from trees.tree import Tree, TreeError, chain, dense, preset

__all__ = ["Tree", "TreeError", "chain", "dense", "preset"]
