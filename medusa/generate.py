"""Generate one answer with Medusa decoding and print it with its stats.

    python -m medusa.generate --prompt "Write a haiku about the sea" --preset mc_sim_7b_63
    python -m medusa.generate --prompt "..." --tree results/_scratch/trees/greedy_64.json --json --threads 1
    python -m medusa.generate --prompt "..." --temperature 0.7 --posterior-threshold 0.09 --posterior-alpha 0.3
    python -m medusa.generate --prompt "..." --temperature 0.7 --rule sample --seed 1   # lossless sampling

Defaults (`medusa.resolve`): backbone `smollm2-135m`, the shipped heads
(`results/heads/smollm2-135m-medusa1`; untrained heads with a warning if absent), the shipped
searched tree (`results/trees/default.json`, else the paper's `mc_sim_7b_63`), torch's own thread
count (all cores). The stats after the answer name the tree it decoded with (name, node budget,
file or preset) and the thread count; one `warning:` line after them says when other processes
shared the cores. Bad input prints one line and exits with
status 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from common.cli import Parser, add_threads, apply_threads, load_average, run_cli, warn_if_busy
from common.errors import WorkbenchError
from common.io import display
from common.paths import DEFAULT_TREE_FILE
from medusa.acceptance import RULES, TYPICAL_ROOTS, AcceptanceConfig
from medusa.backbone import load_backbone
from medusa.decode import DecodeConfig, GenerationResult, generate
from medusa.resolve import (
    add_model_args,
    add_tree_args,
    resolve_heads,
    resolve_tree,
    warn_foreign_tree,
)
from trees.tree import Tree

_DEFAULTS = DecodeConfig()
_ACC = AcceptanceConfig()


def parser() -> Parser:
    p = Parser(prog="python -m medusa.generate", description=__doc__.split("\n")[0])
    p.add_argument("--prompt", required=True)
    add_model_args(p)
    add_tree_args(p)
    add_threads(p)
    p.add_argument("--max-new-tokens", type=int, default=_DEFAULTS.max_new_tokens)
    p.add_argument("--temperature", type=float, default=_ACC.temperature, help="0 = greedy (lossless)")
    p.add_argument("--posterior-threshold", type=float, default=_ACC.posterior_threshold, help="typical acceptance eps")
    p.add_argument("--posterior-alpha", type=float, default=_ACC.posterior_alpha, help="typical acceptance delta")
    p.add_argument("--rule", choices=RULES, default=None,
                   help="acceptance rule: greedy | typical | sample (lossless) (default: greedy at T=0, else typical)")
    p.add_argument("--typical-root", choices=TYPICAL_ROOTS, default=_ACC.typical_root,
                   help="typical acceptance's next root: argmax (official fast mode, default), typical, sample")
    p.add_argument("--top-p", type=float, default=_ACC.top_p, help="sample rule only (default off)")
    p.add_argument("--top-k", type=int, default=_ACC.top_k, help="sample rule only (default off)")
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="seed of the engine's generator (sampling rules)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def tree_source(tree_file: str | None, preset_name: str | None) -> str:
    """Where the tree `medusa.resolve.resolve_tree` returns for these flags comes from."""
    if tree_file is not None:
        return display(Path(tree_file))
    if preset_name is not None:
        return f"preset {preset_name}"
    if DEFAULT_TREE_FILE.is_file():
        return f"{display(DEFAULT_TREE_FILE)} (the shipped default; --tree FILE or --preset NAME for another)"
    return "preset mc_sim_7b_63 (no shipped default tree)"


def stats(tree: Tree, result: GenerationResult, source: str = "", threads: int | None = None) -> dict[str, Any]:
    """The numbers printed after the answer."""
    return {
        "tree": tree.name,
        "node_budget": tree.node_budget,
        "tree_source": source,
        "threads": threads,
        "new_tokens": result.new_tokens,
        "steps": len(result.steps),
        "mean_accepted_length": round(result.mean_accepted_length, 3),
        "tokens_per_s": round(result.tokens_per_s, 2),
        "wall_s": round(result.wall_s, 3),
        "stop_reason": result.stop_reason,
    }


def main(argv: Sequence[str] | None = None) -> int:
    load = load_average()  # the neighbours' load, read before ours adds to it
    args = parser().parse_args(argv)
    if not args.prompt.strip():
        raise WorkbenchError("prompt is empty")
    apply_threads(args.threads)
    config = DecodeConfig(
        max_new_tokens=args.max_new_tokens,
        acceptance=AcceptanceConfig(args.temperature, args.posterior_threshold, args.posterior_alpha, rule=args.rule,
                                    top_p=args.top_p, top_k=args.top_k, typical_root=args.typical_root),
        seed=args.seed,
    )
    tree = resolve_tree(args.tree, args.preset)
    source = tree_source(args.tree, args.preset)
    backbone = load_backbone(args.backbone, dtype=args.dtype, device=args.device)
    resolved = resolve_heads(args.heads, backbone)
    heads = resolved.heads
    warn_foreign_tree(tree, resolved.name, backbone)
    tree.check_fits(heads.num_heads)
    prompt_ids = backbone.chat_ids(args.prompt)
    result = generate(backbone, heads, tree, prompt_ids, config)
    text = backbone.decode(result.output_ids)
    s = stats(tree, result, source, torch.get_num_threads())
    if args.json:
        print(json.dumps({**s, "text": text, "output_ids": result.output_ids, "prompt_ids": result.prompt_ids}))
    else:
        print(text)
        print(f"[{s['new_tokens']} tokens, {s['steps']} steps, mean accepted length {s['mean_accepted_length']}, "
              f"{s['tokens_per_s']} tokens/s with {s['threads']} thread{'s' if s['threads'] != 1 else ''}, stop: {s['stop_reason']}; "
              f"tree {tree.name}, node budget {tree.node_budget}, from {source}]")
    warn_if_busy(load)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
