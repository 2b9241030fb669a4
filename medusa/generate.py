"""Generate one answer with Medusa decoding and print it with its stats.

    python -m medusa.generate --prompt "Write a haiku about the sea" --preset mc_sim_7b_63
    python -m medusa.generate --prompt "..." --tree results/trees/default.json --json
    python -m medusa.generate --prompt "..." --temperature 0.7 --posterior-threshold 0.09 --posterior-alpha 0.3

Defaults: backbone `smollm2-135m`, the shipped heads (`results/heads/smollm2-135m-medusa1`; untrained
heads with a warning if absent), the shipped searched tree (`results/trees/default.json`, else the
paper's `mc_sim_7b_63`). Bad input prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from medusa.acceptance import AcceptanceConfig
from medusa.backbone import DEFAULT_BACKBONE, Backbone, load_backbone
from medusa.decode import DecodeConfig, generate
from medusa.errors import WorkbenchError, run_cli
from medusa.heads import DEFAULT_HEADS_DIR, MedusaHeads, load_heads
from trees.tree import Tree, default_tree, preset

_DEFAULTS = DecodeConfig()
_ACC = AcceptanceConfig()


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Backbone/heads/device options shared by every command that decodes."""
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help="short name or local HF model folder")
    p.add_argument("--heads", default=None, help=f"heads folder (default {DEFAULT_HEADS_DIR.relative_to(DEFAULT_HEADS_DIR.parents[2])})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16")


def add_tree_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tree", default=None, help="tree JSON file (Tree JSON or a medusa_choices list)")
    g.add_argument("--preset", default=None, help="mc_sim_7b_63, root, chain_<d>, dense_<w1>x<w2>...")


def resolve_heads(backbone: Backbone, heads_dir: str | None) -> MedusaHeads:
    """Load the requested heads, or the shipped default, or (with a warning) untrained heads."""
    if heads_dir is not None:
        if not Path(heads_dir).exists():
            raise WorkbenchError(f"heads folder not found: {heads_dir}")
        return load_heads(heads_dir, backbone)
    if (DEFAULT_HEADS_DIR / "config.json").is_file():
        return load_heads(DEFAULT_HEADS_DIR, backbone)
    print("warning: no trained heads found; using untrained heads (every head = the base LM head)", file=sys.stderr)
    return MedusaHeads.for_backbone(backbone)


def resolve_tree(tree_file: str | None, preset_name: str | None) -> Tree:
    if tree_file:
        return Tree.load(tree_file)
    if preset_name:
        return preset(preset_name)
    return default_tree()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medusa.generate", description=__doc__.split("\n")[0])
    p.add_argument("--prompt", required=True)
    add_model_args(p)
    add_tree_args(p)
    p.add_argument("--max-new-tokens", type=int, default=_DEFAULTS.max_new_tokens)
    p.add_argument("--temperature", type=float, default=_ACC.temperature, help="0 = greedy (lossless)")
    p.add_argument("--posterior-threshold", type=float, default=_ACC.posterior_threshold, help="typical acceptance eps")
    p.add_argument("--posterior-alpha", type=float, default=_ACC.posterior_alpha, help="typical acceptance delta")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = p.parse_args(argv)

    if not args.prompt.strip():
        raise WorkbenchError("prompt is empty")
    config = DecodeConfig(
        max_new_tokens=args.max_new_tokens,
        acceptance=AcceptanceConfig(args.temperature, args.posterior_threshold, args.posterior_alpha),
        seed=args.seed,
    )
    tree = resolve_tree(args.tree, args.preset)
    backbone = load_backbone(args.backbone, dtype=args.dtype, device=args.device)
    heads = resolve_heads(backbone, args.heads)
    tree.check_fits(heads.num_heads)
    prompt_ids = backbone.chat_ids(args.prompt)
    result = generate(backbone, heads, tree, prompt_ids, config)
    text = backbone.decode(result.output_ids)
    stats = {
        "tree": tree.name,
        "node_budget": tree.node_budget,
        "new_tokens": result.new_tokens,
        "steps": len(result.steps),
        "mean_accepted_length": round(result.mean_accepted_length, 3),
        "tokens_per_s": round(result.tokens_per_s, 2),
        "wall_s": round(result.wall_s, 3),
        "stop_reason": result.stop_reason,
    }
    if args.json:
        print(json.dumps({**stats, "text": text, "output_ids": result.output_ids, "prompt_ids": result.prompt_ids}))
    else:
        print(text)
        print(
            f"[{stats['new_tokens']} tokens, {stats['steps']} steps, mean accepted length "
            f"{stats['mean_accepted_length']}, {stats['tokens_per_s']} tokens/s, tree {tree.name} "
            f"(budget {tree.node_budget}), stop: {result.stop_reason}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
