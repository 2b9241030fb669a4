"""The heads recipe study: one row per trained heads folder, what its recipe buys on held-out text.

    python -m bench.heads_study results/_scratch/heads/onpath results/_scratch/heads/selfdistilled
    python -m bench.heads_study --out results/heads_study.csv results/_scratch/heads/*   # the committed table

Each folder is a stage-1 run of `medusa.train` evaluated on a self-distilled `--eval-data` (what
decoding sees: the backbone's own greedy continuations). Its training record says the recipe
(data kind and size, loss, `--on-path`, blocks per head, steps, the heads it started from); its
`accuracy.csv` the held-out top-1/5/10 per head; its `eval_ranks.parquet` (written by the final
evaluation) the rank of every held-out position per head, from which the replay model
(`trees.acceptance_model.ReplayModel`) predicts tokens per step for the empirical tree searched at
each node budget (`--budgets`, default 5, 16, 64). The trees are searched on the same held-out
ranks they are scored on, so tau is in-sample for the tree (equally so for every row); `bench.calibrate`
on other prompts gives the out-of-sample figure for heads that are shipped.

The table (`--out`, default results/_scratch/heads_study.csv) is tidy and resumable: a rerun
replaces the rows of the runs it names and keeps the others. Figure: `analysis.figures heads-study`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from common.cli import Parser, comma_list, run_cli
from common.errors import WorkbenchError
from common.io import read_json, write_csv
from common.paths import RESULTS
from medusa.train.stage1 import EVAL_RANKS
from trees.acceptance_model import load_ranks, replay_model_from_ranks
from trees.search import search

DEFAULT_OUT = RESULTS / "_scratch" / "heads_study.csv"
BUDGETS = (5, 16, 64)
TOPKS = (1, 5, 10)


def recipe(record: dict[str, Any]) -> dict[str, Any]:
    """The recipe columns of a run, from its training record (of the heads it evaluated, for a
    `--steps 0` run: that is an evaluation of other heads, not a recipe of its own)."""
    config = record.get("config", {})
    if config.get("steps") == 0 and record.get("evaluated_heads_record"):
        return recipe(record["evaluated_heads_record"])
    data = record.get("train_data") or {}
    kind = data.get("kind", "self-distilled") if data.get("kind") == "teacher" else "self-distilled"
    init = config.get("init_heads") or ""
    return {
        "data": kind if not init else f"{kind} (from {Path(init).name})",
        "loss": config.get("loss", "hard"),
        "on_path": bool(config.get("on_path", False)),
        "train_rows": record.get("train_rows"),
        "layers": config.get("num_layers"),
        "steps": config.get("steps"),
        "batch_size": config.get("batch_size"),
        "train_vocab": config.get("train_vocab"),
        "init_heads": init,
        "train_s": record.get("train_s_this_run"),
    }


def study_row(folder: str | Path, budgets: Sequence[int] = BUDGETS) -> dict[str, Any]:
    """One table row for a heads folder: recipe, held-out top-k per head, replayed tau per budget."""
    folder = Path(folder)
    record = read_json(folder / "training_record.json", "training record", f"python -m medusa.train --stage 1 --out {folder}")
    if record.get("stage") != 1:
        raise WorkbenchError(f"{folder} is not a stage-1 run (the study compares Medusa-1 recipes)")
    acc_path = folder / "accuracy.csv"
    if not acc_path.is_file() or not (folder / EVAL_RANKS).is_file():
        raise WorkbenchError(f"{folder} has no held-out evaluation (accuracy.csv and {EVAL_RANKS}); "
                             "train it with a self-distilled --eval-data")
    acc = pd.read_csv(acc_path)
    row: dict[str, Any] = {"run": folder.name, **recipe(record), "eval_data": (record.get("eval_data") or {}).get("path")}
    for k in sorted(acc["head"].unique()):
        for j in TOPKS:
            hit = acc[(acc["head"] == k) & (acc["topk"] == j)]["accuracy"]
            row[f"top{j}_h{k}"] = float(hit.iloc[0]) if len(hit) else float("nan")
    ranks = load_ranks(folder / EVAL_RANKS)
    replay = replay_model_from_ranks(ranks, str(folder / EVAL_RANKS))
    row["eval_positions"] = replay.positions
    for budget in budgets:
        tree = search("empirical", budget, ranks=ranks).tree
        row[f"tau_{budget}"] = round(replay.tokens_per_step(tree), 4)
    return row


def update_table(out: str | Path, rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Replace the rows of these runs in `out` (kept otherwise) and write it atomically."""
    out = Path(out)
    new = pd.DataFrame(rows)
    if out.is_file():
        old = pd.read_csv(out, keep_default_na=False, na_values=[""])
        new = pd.concat([old[~old["run"].isin(new["run"])], new], ignore_index=True)
    write_csv(new, out, float_format="%.4g")
    return new


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m bench.heads_study", description=__doc__.split("\n")[0])
    p.add_argument("heads", nargs="+", help="stage-1 heads folders trained with a self-distilled --eval-data")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="the study table (rows of these runs replaced)")
    p.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="node budgets for the replayed tau")
    args = p.parse_args(argv)
    budgets = comma_list(args.budgets, int, "--budgets")
    rows = [study_row(h, budgets) for h in args.heads]
    table = update_table(args.out, rows)
    cols = ["run", "data", "loss", "on_path", "train_rows", "layers", "steps", "top1_h1", "top1_h2",
            *[f"tau_{b}" for b in budgets]]
    print(table[[c for c in cols if c in table.columns]].to_string(index=False))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
