"""Generate one answer with Medusa decoding and print it with its stats.

    python -m medusa.generate --prompt "Write a haiku about the sea" --preset mc_sim_7b_63
    python -m medusa.generate --prompt "..." --tree results/trees/default.json --json --threads 1
    python -m medusa.generate --prompt "..." --temperature 0.7 --posterior-threshold 0.09 --posterior-alpha 0.3

Defaults (`medusa.resolve`): backbone `smollm2-135m`, the shipped heads
(`results/heads/smollm2-135m-medusa1`; untrained heads with a warning if absent), the shipped
searched tree (`results/trees/default.json`, else the paper's `mc_sim_7b_63`). Bad input prints one
line and exits with status 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from common.cli import Parser, add_threads, apply_threads, run_cli
from common.errors import WorkbenchError
from medusa.acceptance import AcceptanceConfig
from medusa.backbone import load_backbone
from medusa.decode import DecodeConfig, GenerationResult, generate
from medusa.resolve import add_model_args, add_tree_args, resolve_heads, resolve_tree
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
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def stats(tree: Tree, result: GenerationResult) -> dict[str, Any]:
    """The numbers printed after the answer."""
    return {
        "tree": tree.name,
        "node_budget": tree.node_budget,
        "new_tokens": result.new_tokens,
        "steps": len(result.steps),
        "mean_accepted_length": round(result.mean_accepted_length, 3),
        "tokens_per_s": round(result.tokens_per_s, 2),
        "wall_s": round(result.wall_s, 3),
        "stop_reason": result.stop_reason,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.prompt.strip():
        raise WorkbenchError("prompt is empty")
    apply_threads(args.threads)
    config = DecodeConfig(
        max_new_tokens=args.max_new_tokens,
        acceptance=AcceptanceConfig(args.temperature, args.posterior_threshold, args.posterior_alpha),
    )
    tree = resolve_tree(args.tree, args.preset)
    backbone = load_backbone(args.backbone, dtype=args.dtype, device=args.device)
    heads = resolve_heads(args.heads, backbone).heads
    tree.check_fits(heads.num_heads)
    prompt_ids = backbone.chat_ids(args.prompt)
    result = generate(backbone, heads, tree, prompt_ids, config)
    text = backbone.decode(result.output_ids)
    s = stats(tree, result)
    if args.json:
        print(json.dumps({**s, "text": text, "output_ids": result.output_ids, "prompt_ids": result.prompt_ids}))
    else:
        print(text)
        print(f"[{s['new_tokens']} tokens, {s['steps']} steps, mean accepted length {s['mean_accepted_length']}, "
              f"{s['tokens_per_s']} tokens/s, tree {tree.name} (budget {tree.node_budget}), stop: {s['stop_reason']}]")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
