"""Validate the acceptance models: predicted vs measured accepted length of real decoding.

For trees from each search method (greedy, empirical, and the Optuna/default tree when present)
and the presets at the same node budget (`mc_sim_7b_63`, the best dense tree that fits, the
top-1 chain of all heads; `trees.baselines.validation_trees`), decode held-out MT-Bench prompts
with the engine (greedy acceptance) and compare the mean accepted length per step (root token
included) with what the independence, empirical and replay models fitted on the calibration
prompts predict. This is the measuring side of `trees/`, which never runs a model.

Usage::

    python -m bench.validate                                  # 10 MT-Bench prompts x 96 tokens, budget 64
    python -m bench.validate --limit 20 --max-new-tokens 128 --budget 64 --tree results/trees/default.json
    python -m bench.validate --engine none --replay --limit 40 --out /tmp/replay.csv
    python -m bench.validate --engine greedy_64,empirical_64 --limit 4 --threads 1

With ``--replay`` the prompts are also decoded once (batched) into a ranks table, and every tree's
accepted length is replayed from it (`trees.acceptance_model.simulate_steps`, exact for the decoded
text), which costs nothing per tree: ``--engine none --replay`` validates many trees cheaply.

Writes ``--out`` (default ``results/_scratch/calibration/<heads name>/validation.csv``, git-ignored;
the committed ``results/calibration/<heads name>/validation*.csv`` are refreshed by ``make validate``,
which names them) atomically after every tree, with columns VALIDATION_COLUMNS, and prints a
Markdown table for LOG.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.calibrate import collect_ranks, write_ranks
from common.cli import Parser, add_threads, apply_threads, comma_list, quiet_libraries, run_cli
from common.errors import WorkbenchError
from common.io import display, write_csv
from common.paths import DEFAULT_TREE_FILE, SCRATCH_CALIBRATION, scratch_calibration_dir
from common.provenance import PROVENANCE_COLUMNS, Provenance
from medusa.acceptance import AcceptanceConfig
from medusa.backbone import Backbone, load_backbone
from medusa.data import load_mtbench
from medusa.decode import DecodeConfig, generate
from medusa.resolve import add_model_args, resolve_heads
from trees.acceptance_model import ReplayModel, expected_tokens, load_ranks, replay_model_from_ranks
from trees.baselines import validation_trees
from trees.inputs import AccuracyInputs, heads_name, resolve_accuracy
from trees.tree import Tree

VALIDATION_COLUMNS = [
    "tree", "kind", "node_budget", "depth", "nodes_per_depth", "predicted_independence",
    "predicted_empirical", "predicted_replay", "measured_accepted_length", "error_independence",
    "error_empirical", "error_replay", "steps", "new_tokens", "prompts", "max_new_tokens",
    "tokens_per_s", "verify_ms_per_step", "replayed_accepted_length", "replay_steps",
    "replay_error_independence", "replay_error_empirical", "replay_error_replay", *PROVENANCE_COLUMNS,
]


@dataclass(frozen=True)
class Measurement:
    """Engine results of one tree over a prompt set."""

    accepted_length: float  # mean tokens per step over all steps of all prompts, root included
    quality: float  # mean log p(token) under the backbone (temperature 1) of the generated tokens
    steps: int
    new_tokens: int
    wall_s: float
    verify_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else float("nan")


@torch.inference_mode()
def mean_logprob(backbone: Backbone, prompt_ids: Sequence[int], output_ids: Sequence[int]) -> tuple[float, int]:
    """(sum of log p(token | prefix) under the backbone over `output_ids`, number of tokens)."""
    if not output_ids:
        return 0.0, 0
    ids = torch.tensor([list(prompt_ids) + list(output_ids)], device=backbone.device)
    logits = backbone.model(input_ids=ids).logits[0, len(prompt_ids) - 1: -1].float()
    logp = torch.log_softmax(logits, -1).gather(1, ids[0, len(prompt_ids):, None])
    return float(logp.sum()), len(output_ids)


def measure_tree(
    backbone: Backbone,
    heads: Any,
    tree: Tree,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    acceptance: AcceptanceConfig | None = None,
    quality: bool = False,
) -> Measurement:
    """Decode every prompt with `tree`; pool the per-step accepted lengths of all prompts.

    With `quality`, also score the output's mean log-probability under the backbone.
    """
    config = DecodeConfig(max_new_tokens=max_new_tokens, acceptance=acceptance or AcceptanceConfig())
    lengths: list[int] = []
    new_tokens, wall, verify, lp_sum, lp_n = 0, 0.0, 0.0, 0.0, 0
    for ids in prompts:
        result = generate(backbone, heads, tree, ids, config)
        lengths.extend(s.accepted_length for s in result.steps)
        new_tokens += result.new_tokens
        wall += result.wall_s
        verify += sum(s.verify_s for s in result.steps)
        if quality:
            s, n = mean_logprob(backbone, ids, result.output_ids)
            lp_sum, lp_n = lp_sum + s, lp_n + n
    if not lengths:
        raise WorkbenchError("no decoding steps were measured (max_new_tokens too small or prompts end at once)")
    return Measurement(
        accepted_length=sum(lengths) / len(lengths),
        quality=lp_sum / lp_n if lp_n else float("nan"),
        steps=len(lengths), new_tokens=new_tokens, wall_s=wall, verify_s=verify,
    )


# ---- replayed and tabulated --------------------------------------------------------------------
def replay_accepted_length(replay: ReplayModel | pd.DataFrame, tree: Tree) -> tuple[float, int]:
    """(mean accepted length, steps) the greedy engine would get, replayed from a ranks table.

    Exact for the decoded text (see `trees.acceptance_model.simulate_steps`): one decoding pass
    serves every tree. Steps are pooled over prompts. Give a `ReplayModel` to reuse its rank
    matrices across trees.
    """
    model = replay if isinstance(replay, ReplayModel) else replay_model_from_ranks(replay)
    lengths = model.steps(tree)
    if not lengths:
        raise WorkbenchError("the ranks table has no positions to replay")
    return sum(lengths) / len(lengths), len(lengths)


def validation_row(kind: str, tree: Tree, inputs: AccuracyInputs, meas: Measurement | None,
                   n_prompts: int, max_new_tokens: int, replay: tuple[float, int] | None = None) -> dict[str, Any]:
    """One table row; `error_*` are relative to the engine's measurement, `replay_error_*` to the
    replayed one (NaN when that was not run)."""
    nan = float("nan")
    pi = expected_tokens(tree, inputs.marginals)
    pe = expected_tokens(tree, inputs.stats) if inputs.stats is not None else nan
    pr = expected_tokens(tree, inputs.replay) if inputs.replay is not None else nan
    a = meas.accepted_length if meas is not None else nan
    b = replay[0] if replay else nan
    return {
        "tree": tree.name, "kind": kind, "node_budget": tree.node_budget, "depth": tree.depth,
        "nodes_per_depth": "-".join(map(str, tree.nodes_per_depth())),
        "predicted_independence": pi, "predicted_empirical": pe, "predicted_replay": pr,
        "measured_accepted_length": a,
        "error_independence": (pi - a) / a, "error_empirical": (pe - a) / a, "error_replay": (pr - a) / a,
        "steps": meas.steps if meas else 0, "new_tokens": meas.new_tokens if meas else 0, "prompts": n_prompts,
        "max_new_tokens": max_new_tokens, "tokens_per_s": meas.tokens_per_s if meas else nan,
        "verify_ms_per_step": 1e3 * meas.verify_s / meas.steps if meas else nan,
        "replayed_accepted_length": b, "replay_steps": replay[1] if replay else 0,
        "replay_error_independence": (pi - b) / b, "replay_error_empirical": (pe - b) / b,
        "replay_error_replay": (pr - b) / b,
    }


def markdown(table: pd.DataFrame) -> str:
    """The table as markdown: the columns that hold a value (errors against the engine's measurement
    when the engine ran, against the replay when it replayed, both when both)."""
    cols = ["tree", "node_budget", "predicted_independence", "predicted_empirical", "predicted_replay",
            "measured_accepted_length", "replayed_accepted_length", "error_independence", "error_empirical",
            "error_replay", "replay_error_independence", "replay_error_empirical", "replay_error_replay",
            "tokens_per_s"]
    cols = cols[:2] + [c for c in cols[2:] if c in table.columns and table[c].notna().any()]

    def cell(c: str, v: Any) -> str:
        if c == "tree":
            return str(v)
        if c == "node_budget":
            return str(int(v))
        if pd.isna(v):
            return "-"
        return f"{100 * v:+.1f}%" if "error" in c else f"{v:.1f}" if c == "tokens_per_s" else f"{v:.3f}"

    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join("| " + " | ".join(cell(c, r[c]) for c in cols) + " |\n" for _, r in table.iterrows())


def mtbench_prompts(n: int) -> list[Any]:
    """`n` MT-Bench first turns spread over the categories (every 80/n-th question)."""
    allp = [p.first_turn() for p in load_mtbench()]
    if n > len(allp):
        raise WorkbenchError(f"MT-Bench has {len(allp)} questions, asked for {n}")
    step = len(allp) / n
    return [allp[int(i * step)] for i in range(n)]


# ---- CLI ----------------------------------------------------------------------------------------
def parser() -> Parser:
    p = Parser(prog="python -m bench.validate", description=__doc__.split("\n")[0])
    add_model_args(p)
    add_threads(p)
    p.add_argument("--budget", type=int, default=64)
    p.add_argument("--limit", type=int, default=10, help="number of MT-Bench prompts (first turns, spread over categories)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--accuracy", default=None,
                   help="calibration accuracy.csv (paths.csv beside it; default: the calibration of --heads)")
    p.add_argument("--tree", action="append", default=[],
                   help="extra tree JSON files to validate (comma-separated or repeated; default: the shipped default tree)")
    p.add_argument("--out", default=None, help=f"CSV (default {display(SCRATCH_CALIBRATION)}/<heads name>/validation.csv)")
    p.add_argument("--engine", default="all",
                   help="trees decoded with the engine: all, none, or comma-separated tree names")
    p.add_argument("--replay", action="store_true",
                   help="also decode the prompts once (batched) and replay every tree from their ranks")
    p.add_argument("--batch-size", type=int, default=8, help="batch of the replay's decoding pass")
    p.add_argument("--replay-ranks", default=None,
                   help="reuse a ranks table from an earlier --replay run (same prompts) instead of decoding")
    return p


def check_args(args: Any) -> None:
    """Every flag check that loads nothing."""
    if args.limit < 1 or args.max_new_tokens < 2:
        raise WorkbenchError("--limit must be >= 1 and --max-new-tokens >= 2")
    args.replay = args.replay or args.replay_ranks is not None
    if args.engine == "none" and not args.replay:
        raise WorkbenchError("--engine none measures nothing without --replay")


def engine_trees(engine: str, trees: Sequence[tuple[str, Tree]]) -> set[str]:
    """Names of the trees `--engine` decodes with the engine: all, none or the listed ones."""
    names = {t.name for _, t in trees}
    if engine == "all":
        return names
    if engine == "none":
        return set()
    wanted = set(comma_list(engine, flag="--engine"))
    unknown = sorted(wanted - names)
    if unknown:
        raise WorkbenchError(f"--engine: no tree named {', '.join(unknown)} (trees: {', '.join(sorted(names))})")
    return wanted


def replay_ranks(args: Any, backbone: Backbone, heads: Any, named: Sequence[tuple[str, list[int]]],
                 top_r: int, out: Path) -> pd.DataFrame | None:
    """The ranks table every tree is replayed from: read (--replay-ranks), decoded (--replay), or none."""
    if args.replay_ranks:
        return load_ranks(args.replay_ranks)
    if not args.replay:
        return None
    t0 = time.perf_counter()
    ranks = collect_ranks(backbone, heads, named, args.max_new_tokens, top_r, batch_size=args.batch_size)
    write_ranks(ranks, out.with_name(out.stem + "_ranks.parquet"))
    print(f"  replay ranks: {ranks['prompt'].nunique()} prompts, {len(ranks) // heads.num_heads} positions "
          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return ranks


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_args(args)
    inputs = resolve_accuracy(args.accuracy, heads=args.heads)
    extra = [Tree.load(t) for t in comma_list(args.tree, flag="--tree")]
    if not args.tree and DEFAULT_TREE_FILE.is_file():
        extra.append(Tree.load(DEFAULT_TREE_FILE))
    trees = validation_trees(inputs, args.budget, extra)
    engine_names = engine_trees(args.engine, trees)
    name = inputs.calibration_dir.name if inputs.calibration_dir is not None else heads_name(args.heads)
    out = Path(args.out) if args.out else scratch_calibration_dir(name) / "validation.csv"
    apply_threads(args.threads)
    quiet_libraries()

    backbone = load_backbone(args.backbone, dtype=args.dtype, device=args.device)
    heads = resolve_heads(args.heads, backbone).heads
    for _, tree in trees:
        tree.check_fits(heads.num_heads)
    named = [(pr.id, backbone.chat_ids(pr.text)) for pr in mtbench_prompts(args.limit)]
    prompts = [ids for _, ids in named]
    ranks = replay_ranks(args, backbone, heads, named, inputs.marginals.top_r, out)
    replay_model = replay_model_from_ranks(ranks) if ranks is not None else None
    provenance = Provenance.collect(str(backbone.device), backbone.dtype, args.threads).as_dict()
    rows = []
    for kind, tree in trees:
        t0 = time.perf_counter()
        meas = measure_tree(backbone, heads, tree, prompts, args.max_new_tokens) if tree.name in engine_names else None
        replay = replay_accepted_length(replay_model, tree) if replay_model is not None else None
        rows.append({**validation_row(kind, tree, inputs, meas, len(prompts), args.max_new_tokens, replay),
                     **provenance})
        write_csv(pd.DataFrame(rows, columns=VALIDATION_COLUMNS), out)
        r = rows[-1]
        print(f"  {tree.name:24s} budget {tree.node_budget:4d}  measured {r['measured_accepted_length']:.3f}  "
              f"replayed {r['replayed_accepted_length']:.3f}  indep {r['predicted_independence']:.3f}  "
              f"emp {r['predicted_empirical']:.3f}  replay model {r['predicted_replay']:.3f}  "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    print(markdown(pd.DataFrame(rows, columns=VALIDATION_COLUMNS)))
    print(f"wrote {display(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
