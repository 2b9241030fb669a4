"""What a decoding command runs with: the heads and tree its flags name, else the shipped defaults.

The one place that turns `--heads FOLDER` and `--tree FILE` / `--preset NAME` into loaded objects,
used by `medusa.generate`, `bench.run` and every other command that decodes. The defaults come
from `common.paths` only: the shipped heads folder (`DEFAULT_HEADS_DIR`; untrained heads, with a
warning, when it is absent) and the shipped searched tree (`trees.tree.default_tree`).
`--heads untrained` (the word) asks for fresh untrained heads on any backbone: a quick look at a
new model before distilling and training its own heads.

A searched tree is tuned to the heads' accuracies (and, for `--method optuna`, to one device's
latency profile); `warn_foreign_tree` prints one `warning:` line when the tree a command decodes
with was searched for other heads, another backbone or another device (it still decodes
correctly, only perhaps not at its best).

    heads = resolve_heads(args.heads, backbone)      # .heads (the module), .name (for records)
    tree = resolve_tree(args.tree, args.preset)
    warn_foreign_tree(tree, heads.name, backbone)

`add_model_args` / `add_tree_args` add the matching flags (`--backbone --heads --device --dtype`,
`--tree | --preset`) so they mean the same in every command (README "Flags").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.cli import add_dtype
from common.errors import WorkbenchError
from common.io import display
from common.paths import DEFAULT_HEADS_DIR, REPO_ROOT
from common.provenance import device_slug
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
    """Heads from `folder` (`untrained`: fresh heads), else the shipped heads, else (with a warning) untrained heads.

    A folder literally named `untrained` is reached as `./untrained`.
    """
    if folder == UNTRAINED:
        return ResolvedHeads(MedusaHeads.for_backbone(backbone), UNTRAINED, None)
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


# ---- where a tree was searched for ----------------------------------------------------------------
@dataclass(frozen=True)
class TreeTarget:
    """What a tree was searched for, or is decoded with: heads name, backbone name, device (None: unknown)."""

    heads: str | None
    backbone: str | None
    device: str | None


def _file_near(recorded: str) -> Path | None:
    """A path recorded in a result file (relative to where the command ran), if it exists here."""
    path = Path(recorded)
    for candidate in (path, Path.cwd() / path, REPO_ROOT / path) if not path.is_absolute() else (path,):
        if candidate.exists():
            return candidate
    return None


def _read_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def tree_target(tree: Tree) -> TreeTarget | None:
    """What `tree` was searched for, from its meta; None for a tree that was not searched (a preset).

    The heads come from the accuracy table the search read (``results/calibration/<heads>/...`` or
    ``results/heads/<heads>/accuracy.csv``), the backbone from that calibration's
    ``calibration.json`` (or the heads' ``config.json``), the device from the latency profile a
    hardware-aware search used (`device`); `heads`/`backbone` keys in the meta take precedence.
    """
    meta = tree.meta
    accuracy = meta.get("accuracy")
    if not isinstance(accuracy, str) and "heads" not in meta:
        return None
    heads, backbone = meta.get("heads"), meta.get("backbone")
    if isinstance(accuracy, str):
        table = Path(accuracy)
        if table.parent.parent.name in ("calibration", "heads"):
            heads = heads or table.parent.name
        folder = _file_near(str(table.parent))
        if folder is not None:
            calibration = _read_object(folder / "calibration.json")
            heads = heads or (Path(calibration["heads"]).name if isinstance(calibration.get("heads"), str) else None)
            backbone = backbone or calibration.get("backbone")
            identity = _read_object(folder / "config.json").get("backbone")
            if not backbone and isinstance(identity, dict):
                backbone = identity.get("name")
    device = meta.get("device")
    return TreeTarget(Path(str(heads)).name if heads else None, str(backbone) if backbone else None,
                      str(device) if device else None)


def _hardware(slug: str) -> str:
    """A device slug without its engine mode and CPU thread count (`cpu-amd-epyc-1t-compiled` -> `cpu-amd-epyc`)."""
    return re.sub(r"-\d+t$", "", re.sub(r"-compiled$", "", slug))


def tree_mismatch(tree: Tree, here: TreeTarget) -> str | None:
    """One line saying what `tree` was searched for that differs from `here`, else None."""
    searched = tree_target(tree)
    if searched is None:
        return None
    differs = []
    for what, theirs, mine in (("heads", searched.heads, here.heads), ("backbone", searched.backbone, here.backbone)):
        if theirs and mine and theirs != mine:
            differs.append(f"{what} {theirs}, not {mine}")
    if searched.device and here.device and _hardware(searched.device) != _hardware(here.device):
        differs.append(f"device {searched.device}, not {here.device}")
    if not differs:
        return None
    return (f"tree {tree.name} was searched for {'; '.join(differs)}: it decodes correctly but may be far from "
            "the best tree here (search one: python -m trees.search --heads FOLDER, after bench.calibrate)")


def warn_foreign_tree(tree: Tree | None, heads_name: str, backbone: Backbone) -> None:
    """Print one `warning:` line when `tree` was searched for other heads, backbone or device."""
    if tree is None or not heads_name:
        return
    heads = UNTRAINED if heads_name == UNTRAINED else Path(heads_name.split("@")[0]).name
    here = TreeTarget(heads, backbone.name, device_slug(str(backbone.device)))
    message = tree_mismatch(tree, here)
    if message:
        print(f"warning: {message}", file=sys.stderr)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """`--backbone`, `--heads FOLDER`, `--device`, `--dtype`: shared by every command that decodes."""
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help="short name or local HF model folder")
    p.add_argument("--heads", default=None,
                   help=f"heads folder (default {DEFAULT_HEADS_DIR.relative_to(REPO_ROOT)}), or `{UNTRAINED}` "
                        "for fresh untrained heads on any backbone")
    p.add_argument("--device", default="cpu")
    add_dtype(p)


def add_tree_args(p: argparse.ArgumentParser) -> None:
    """`--tree FILE` or `--preset NAME` (mutually exclusive); neither: the shipped default tree."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tree", default=None, help="tree JSON file (Tree JSON or a medusa_choices list)")
    g.add_argument("--preset", default=None, help="mc_sim_7b_63, root, chain_<d>, dense_<w1>x<w2>...")
