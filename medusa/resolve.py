"""What a decoding command runs with: the heads and tree its flags name, else the shipped defaults.

The one place that turns `--heads FOLDER` and `--tree FILE` / `--preset NAME` into loaded objects,
used by `medusa.generate`, `bench.run` and every other command that decodes. The defaults come
from `common.paths` only: the shipped heads folder (`DEFAULT_HEADS_DIR`; untrained heads, with a
warning, when it is absent) and the shipped searched tree (`trees.tree.default_tree`).

    heads = resolve_heads(args.heads, backbone)      # .heads (the module), .name (for records)
    tree = resolve_tree(args.tree, args.preset)

`add_model_args` / `add_tree_args` add the matching flags (`--backbone --heads --device --dtype`,
`--tree | --preset`) so they mean the same in every command (README "Flags").
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from common.cli import add_dtype
from common.errors import WorkbenchError
from common.io import display
from common.paths import DEFAULT_HEADS_DIR, REPO_ROOT
from medusa.backbone import DEFAULT_BACKBONE, Backbone
from medusa.heads import MedusaHeads, heads_fingerprint, load_heads
from trees.tree import Tree, default_tree, preset

UNTRAINED = "untrained"


@dataclass(frozen=True)
class ResolvedHeads:
    """Loaded heads and the name results record for them.

    `name` is ``<folder>@<weights fingerprint>`` (the shipped folder relative to the repository), so
    results of retrained heads in the same folder never mix; ``untrained`` for fresh heads.
    """

    heads: MedusaHeads
    name: str
    folder: Path | None  # None: untrained heads


def resolve_heads(folder: str | os.PathLike | None, backbone: Backbone) -> ResolvedHeads:
    """Heads from `folder`, else the shipped heads, else (with a warning) untrained heads."""
    if folder is not None:
        path = Path(folder)
        if not path.exists():
            raise WorkbenchError(f"heads folder not found: {display(path)}")
        shown = str(folder)
    elif (DEFAULT_HEADS_DIR / "config.json").is_file():
        path, shown = DEFAULT_HEADS_DIR, str(DEFAULT_HEADS_DIR.relative_to(REPO_ROOT))
    else:
        print("warning: no trained heads found; using untrained heads (every head = the base LM head)",
              file=sys.stderr)
        return ResolvedHeads(MedusaHeads.for_backbone(backbone), UNTRAINED, None)
    heads = load_heads(path, backbone)
    return ResolvedHeads(heads, f"{shown}@{heads_fingerprint(path)}", path)


def resolve_tree(tree_path: str | os.PathLike | None = None, preset_name: str | None = None) -> Tree:
    """The tree in `tree_path`, else the preset `preset_name`, else the shipped default tree."""
    if tree_path is not None and preset_name is not None:
        raise WorkbenchError("give at most one of --tree and --preset")
    if tree_path is not None:
        return Tree.load(tree_path)
    if preset_name is not None:
        return preset(preset_name)
    return default_tree()


def add_model_args(p: argparse.ArgumentParser) -> None:
    """`--backbone`, `--heads FOLDER`, `--device`, `--dtype`: shared by every command that decodes."""
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help="short name or local HF model folder")
    p.add_argument("--heads", default=None,
                   help=f"heads folder (default {DEFAULT_HEADS_DIR.relative_to(REPO_ROOT)}, else untrained heads)")
    p.add_argument("--device", default="cpu")
    add_dtype(p)


def add_tree_args(p: argparse.ArgumentParser) -> None:
    """`--tree FILE` or `--preset NAME` (mutually exclusive); neither: the shipped default tree."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tree", default=None, help="tree JSON file (Tree JSON or a medusa_choices list)")
    g.add_argument("--preset", default=None, help="mc_sim_7b_63, root, chain_<d>, dense_<w1>x<w2>...")
