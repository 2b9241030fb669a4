"""The heads recipe study: what data, loss and size buy on held-out self-distilled text.

``heads-study``: `recipe_study` -> heads_study. From ``heads_study.csv`` (`bench.heads_study`): (a)
held-out top-1 accuracy of heads 1-4 per run (one line per run), (b) the replay model's tokens per
step at the empirical tree of each node budget (5, 16, 64 by default). Runs are labelled by data
kind, loss, `--on-path`, training positions and steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis import load
from analysis.style import caption, new_figure, save

STUDY_FILE = "heads_study.csv"
COMMAND = "python -m bench.heads_study --out results/heads_study.csv <heads folders>"


def run_label(row: Any) -> str:
    path = ", on-path" if str(row["on_path"]).lower() == "true" else ""
    rows = f"{int(row['train_rows']) / 1000:.0f}k" if row["train_rows"] == row["train_rows"] else "?"
    blocks = f", {int(row['layers'])} blocks" if "layers" in row and row["layers"] == row["layers"] and int(row["layers"]) > 1 else ""
    return f"{row['data']}, {row['loss']}{path}{blocks}, {rows} pos, {int(row['steps'])} steps"


def recipe_study(results: Path, out: Path, **_: Any) -> list[Path]:
    table = load.read_table(results / STUDY_FILE, ["run", "data", "loss", "on_path", "train_rows", "steps", "top1_h1"],
                            COMMAND, "heads study table")
    heads = sorted(int(c.split("_h")[1]) for c in table.columns if c.startswith("top1_h"))
    budgets = sorted(int(c.split("_")[1]) for c in table.columns if c.startswith("tau_"))
    fig, axes = new_figure(ncols=2, width=5.2, height=3.8)
    acc, tau = axes[0, 0], axes[0, 1]
    for _, row in table.iterrows():
        label = run_label(row)
        acc.plot(heads, [row[f"top1_h{k}"] for k in heads], marker="o", lw=1.4, label=label)
        tau.plot(budgets, [row[f"tau_{b}"] for b in budgets], marker="o", lw=1.4, label=label)
    acc.set_xlabel("head k (predicts token t+k+1)")
    acc.set_ylabel("held-out top-1 accuracy")
    acc.set_xticks(heads)
    acc.set_ylim(bottom=0)
    acc.set_title("(a) top-1 per head")
    tau.set_xscale("log")
    tau.minorticks_off()
    tau.set_xticks(budgets, [str(b) for b in budgets])
    tau.set_xlabel("node budget (tokens verified per step)")
    tau.set_ylabel("replayed tokens per step")
    tau.set_title("(b) accepted length, replay model")
    tau.legend(frameon=False, fontsize=6, loc="lower right")
    evals = ", ".join(sorted({str(e) for e in table.get("eval_data", [])}))
    caption(fig, f"Medusa-1 heads, held-out self-distilled text: {evals}; "
                 f"{len(table)} runs from {load.display(results / STUDY_FILE)}")
    return save(fig, out, "heads_study")
