"""Our heads to and from the official Medusa layout, so published heads run here and ours run there.

    python -m medusa.official export --heads results/heads/smollm2-135m-medusa1 --out /tmp/medusa1 [--tree FILE]
    python -m medusa.official import --from /tmp/medusa1 --out results/heads/imported [--backbone NAME]

`export` writes a Medusa-1 folder (medusa/official_layout.py says what is in it): each head's
residual blocks, its projection written out in full (an ``own`` projection as trained, a
``shared`` one as a copy of the backbone's LM head), and the tree (``--tree``/``--preset``, else
the shipped default) as ``medusa_choices`` in config.json and in ``medusa_choices.json``. The
official code (``MedusaModel.from_pretrained``) and TensorRT-LLM's Medusa converter
(``convert_checkpoint.py --medusa_model_dir``) read that folder; pass the choices to their
``medusa_choices`` argument. Heads with two or more blocks run the same in TensorRT-LLM (distinct
blocks) but not in the official code, whose ``[ResBlock] * n`` keeps one block per head: a note says so.

`import` converts an official folder (Medusa-1 files or a Medusa-2 model's ``medusa_head.*``
weights) into our layout for the given backbone, and writes its ``medusa_choices``, if any, as
``tree.json`` beside the heads. Importing is optional: ``--heads`` accepts an official folder in
every command (converted in memory by `medusa.heads.load_heads`).

Bad input (hidden size or vocabulary not the backbone's, a config without ``medusa_num_heads``, a
truncated weights file) prints one ``error:`` line and exits with status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from common.cli import Parser, comma_list, run_cli
from common.errors import WorkbenchError
from common.io import atomic_write, display
from common.paths import DEFAULT_HEADS_DIR
from medusa.backbone import DEFAULT_BACKBONE, Backbone, load_backbone
from medusa.heads import HeadsConfig, MedusaHeads, heads_fingerprint, load_heads
from medusa.official_layout import (
    WRITE_FORMATS,
    OfficialHeads,
    is_official_layout,
    read_official,
    write_official,
)
from medusa.resolve import add_tree_args, resolve_tree
from trees.tree import Tree

# Hub ids of the shipped short names, for base_model_name_or_path (the official loader fetches it).
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
EXPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def to_official(heads: MedusaHeads, base_model: str = "", tree: Tree | None = None,
                dtype: torch.dtype | None = None) -> OfficialHeads:
    """Our heads as official-layout tensors; the projection in full (a shared one copies the LM head)."""
    dtype = dtype or heads.projection(0).weight.dtype

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device="cpu", dtype=dtype)

    blocks = tuple(tuple((cast(rb.linear.weight), cast(rb.linear.bias)) for rb in head) for head in heads.blocks)
    projections = tuple(cast(heads.projection(k).weight) for k in range(heads.num_heads))
    choices = tuple(tuple(p) for p in tree.medusa_choices()) if tree is not None else None
    return OfficialHeads(blocks=blocks, projections=projections, base_model=base_model, medusa_choices=choices)


def from_official(official: OfficialHeads, backbone: Backbone) -> MedusaHeads:
    """Official-layout heads as our `MedusaHeads` on `backbone` (shape-checked; blocks as stored)."""
    fields, state = official.to_workbench(backbone)
    heads = MedusaHeads(HeadsConfig(**fields), backbone.model.get_output_embeddings())
    heads.load_state_dict(state)
    return heads.to(dtype=backbone.dtype).eval()


def _blocks_note(official: OfficialHeads) -> str | None:
    """What the official code's shared block means for these heads, when they have two or more blocks."""
    if official.num_layers < 2:
        return None
    if official.shared_blocks:
        return (f"note: each head applies one block {official.num_layers} times (the official [ResBlock] * n); "
                "our heads hold it as identical distinct blocks: same function")
    return (f"note: these heads have {official.num_layers} distinct blocks per head; TensorRT-LLM applies them "
            "as such, the official MedusaModel keeps only the last block per head ([ResBlock] * n)")


def export(args) -> int:
    heads_dir = Path(args.heads)
    if not heads_dir.is_dir():
        raise WorkbenchError(f"heads folder not found: {display(heads_dir)}")
    tree = resolve_tree(args.tree, args.preset)
    backbone = load_backbone(args.backbone)
    heads = load_heads(heads_dir, backbone)
    tree.check_fits(heads.num_heads)
    base = args.base_model or HUB_IDS.get(backbone.name, args.backbone)
    official = to_official(heads, base, tree, EXPORT_DTYPES[args.out_dtype])
    out = Path(args.out)
    source = heads_dir if is_official_layout(heads_dir) else heads_dir / "heads.safetensors"
    extra = {"workbench": {"heads": display(heads_dir), "heads_fingerprint": heads_fingerprint(heads_dir),
                           "lm_projection": heads.config.lm_projection, "tree": tree.name, "source": str(source)}}
    written = write_official(out, official, tuple(comma_list(args.format, flag="--format")), extra)
    written.append(atomic_write(out / "medusa_choices.json", _choices_json(tree)))
    note = _blocks_note(official)
    if note:
        print(note, file=sys.stderr)
    print(f"wrote {', '.join(display(p) for p in written)} ({heads.num_heads} heads x {heads.config.num_layers} "
          f"blocks, {args.out_dtype}; tree {tree.name}, {tree.node_budget} nodes)")
    return 0


def _choices_json(tree: Tree) -> str:
    """The bare `medusa_choices` list, one line (the form the official repo's choices files hold)."""
    return "[" + ", ".join(str(list(p)) for p in tree.medusa_choices()) + "]\n"


def import_(args) -> int:
    src = Path(args.source)
    if not src.is_dir():
        raise WorkbenchError(f"official heads folder not found: {display(src)}")
    if not is_official_layout(src):
        raise WorkbenchError(f"{display(src)} is not in the official Medusa layout (medusa_lm_head.pt or "
                             ".safetensors with config.json, or a model with medusa_head.* weights)")
    official = read_official(src)
    backbone = load_backbone(args.backbone)
    heads = from_official(official, backbone)
    out = Path(args.out)
    heads.save(out, extra={"imported_from": {"folder": str(src), "source": official.source,
                                             "base_model_name_or_path": official.base_model,
                                             "shared_blocks": official.shared_blocks}})
    wrote = [out / "heads.safetensors", out / "config.json"]
    if official.medusa_choices:
        tree = Tree.from_paths([list(p) for p in official.medusa_choices], name=f"{src.name}_medusa_choices")
        wrote.append(tree.save(out / "tree.json"))
    note = _blocks_note(official)
    if note:
        print(note, file=sys.stderr)
    print(f"wrote {', '.join(display(p) for p in wrote)} ({heads.num_heads} heads x {heads.config.num_layers} "
          f"blocks, {heads.config.lm_projection} projection) for backbone {backbone.name}")
    return 0


def parser() -> Parser:
    p = Parser(prog="python -m medusa.official", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    e = sub.add_parser("export", help="our heads folder -> an official Medusa-1 folder")
    e.add_argument("--heads", default=str(DEFAULT_HEADS_DIR), help="heads folder (ours or official)")
    e.add_argument("--out", required=True, help="folder to write config.json, medusa_lm_head.* and medusa_choices.json")
    add_tree_args(e)  # the tree written as medusa_choices (default: the shipped tree)
    e.add_argument("--backbone", default=DEFAULT_BACKBONE, help="the backbone the heads belong to")
    e.add_argument("--base-model", default=None,
                   help="base_model_name_or_path to record (default: the backbone's hub id, else its name)")
    e.add_argument("--out-dtype", default="float32", choices=sorted(EXPORT_DTYPES),
                   help="dtype of the written weights (default float32: exact; official heads are often float16)")
    e.add_argument("--format", default="pt", help=f"comma list of {', '.join(WRITE_FORMATS)} (default pt)")
    i = sub.add_parser("import", help="an official Medusa folder -> our heads folder")
    i.add_argument("--from", dest="source", required=True, help="official folder (Medusa-1 or Medusa-2)")
    i.add_argument("--out", required=True, help="heads folder to write")
    i.add_argument("--backbone", default=DEFAULT_BACKBONE, help="the backbone to check the heads against")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return export(args) if args.command == "export" else import_(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
