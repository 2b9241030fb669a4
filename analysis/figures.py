"""The paper-style figures, each made from tidy files under results/ only (no model is run).

    python -m analysis.figures                         # every figure whose inputs exist -> results/_scratch/figures
    python -m analysis.figures speedup latency         # only these (exit 2 if one cannot be made)
    python -m analysis.figures --out results/figures   # refresh the committed figures (make figures)
    python -m analysis.figures --results results/_scratch --run mtbench   # from your own scratch runs
    python -m analysis.figures --list

Figures read the committed results under ``results/`` (or ``--results``) and, unless told ``--out``,
are written to ``results/_scratch/figures`` (git-ignored), so making them never changes the
committed figures the README shows. The speedup figure shows the reference run
(`common.paths.REFERENCE_RUN`, ``mtbench-ref``) unless ``--run NAME`` names another.

Behaviour: without names, every figure whose inputs exist is written (PNG and PDF) and each one
that cannot be made is reported on one line ``skipped <name>: <reason>`` naming the command to run
first; the exit status is 0. Named figures must all be made: the first that cannot ends the command
with one ``error: ...`` line and exit status 2.

This module is the registry (`FIGURES`), `make`/`make_all` and the CLI; each figure is drawn by a
function in a module per topic, whose docstring says what it reads and draws. Figures (name:
function -> file stem):

- `analysis.fig_bench` (benchmark runs under ``bench/``):
  1. ``speedup``: `speedup_by_category` -> speedup_by_category (paper Fig. 3b)
  2. ``budget``: `tree_budget` -> tree_budget (paper Fig. 4)
  3. ``typical``: `typical_acceptance` -> typical_acceptance (paper Fig. 5)
- `analysis.fig_trees` (heads, tree, search: ``calibration/``, ``trees/``):
  4. ``head-accuracy``: `head_accuracy` -> head_accuracy
  5. ``tree``: `searched_tree` -> searched_tree
  6. ``validation``: `acceptance_validation` -> acceptance_validation
  9. ``pareto``: `pareto_front` -> pareto_<front>
- `analysis.fig_confidence` (``calibration/<heads>/confidence.csv``):
  10. ``confidence``: `reliability` -> confidence_reliability
- `analysis.fig_policies` (``calibration/<heads>/policies.csv``, `bench.policy_replay`):
  13. ``policies``: `policy_budget` -> policy_budget
  14. ``dynamic-trees``: `dynamic_trees` -> dynamic_trees_16
- `analysis.fig_heads_study` (``heads_study.csv``, `bench.heads_study`):
  11. ``heads-study``: `recipe_study` -> heads_study
- `analysis.fig_throughput` (``throughput/<run>/requests.csv``, `bench.throughput`):
  12. ``batching``: `batching` -> batching_<run>
- `analysis.fig_machine` (machine and training: ``latency/``, ``heads/``):
  7. ``latency``: `latency_profile` -> latency_<device>
  8. ``training``: `training_curves` -> training_<heads>

A new figure: a function ``(results: Path, out: Path, **options) -> list[Path]`` in the module of
its topic (drawn with `analysis.style`), plus one `FIGURES` entry here. Every figure carries axis
labels with units and a caption line naming device and model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis import load
from analysis.fig_bench import (
    speedup_by_category,
    tree_budget,
    typical_acceptance,
)
from analysis.fig_confidence import reliability
from analysis.fig_heads_study import recipe_study
from analysis.fig_machine import latency_profile, training_curves
from analysis.fig_policies import dynamic_trees, policy_budget
from analysis.fig_throughput import batching
from analysis.fig_trees import (
    acceptance_validation,
    head_accuracy,
    pareto_front,
    searched_tree,
)
from analysis.style import styled
from bench.summarize import REFERENCE
from common.cli import Parser, run_cli
from common.errors import WorkbenchError
from common.paths import REFERENCE_RUN, SCRATCH_FIGURES


# ---- registry and CLI ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FigureSpec:
    function: Callable[..., list[Path]]
    title: str


FIGURES: dict[str, FigureSpec] = {
    "speedup": FigureSpec(speedup_by_category, f"speedup per category over {REFERENCE} (paper Fig. 3b)"),
    "budget": FigureSpec(tree_budget, "accepted length and tokens/s against node budget (paper Fig. 4)"),
    "typical": FigureSpec(typical_acceptance, "typical acceptance: accepted length against quality (paper Fig. 5)"),
    "head-accuracy": FigureSpec(head_accuracy, "head top-i accuracy per head"),
    "tree": FigureSpec(searched_tree, "the searched tree coloured by acceptance probability"),
    "validation": FigureSpec(acceptance_validation, "predicted vs measured accepted length per tree"),
    "latency": FigureSpec(latency_profile, "verify time against query tokens with machine floors"),
    "training": FigureSpec(training_curves, "training curves of the shipped heads"),
    "pareto": FigureSpec(pareto_front, "Pareto front of accepted length against verify time (optuna --pareto)"),
    "confidence": FigureSpec(reliability, "calibrated confidence of the heads' probabilities (per-step trees)"),
    "heads-study": FigureSpec(recipe_study, "heads recipe study: top-1 per head and replayed accepted length"),
    "batching": FigureSpec(batching, "throughput and Medusa's speedup against batch size"),
    "policies": FigureSpec(policy_budget, "static, dynamic and hybrid (lookup + heads) trees against node budget"),
    "dynamic-trees": FigureSpec(dynamic_trees, "three real per-step dynamic trees (head 1 sure, middling, lost)"),
}


def make(name: str, results: str | Path | None = None, out: str | Path | None = None, **options: Any) -> list[Path]:
    """Make one figure by registry name; returns the written files (raises `WorkbenchError`)."""
    if name not in FIGURES:
        raise WorkbenchError(f"unknown figure {name!r} (known: {', '.join(FIGURES)})")
    with styled():
        return FIGURES[name].function(load.results_path(results), Path(out) if out is not None else SCRATCH_FIGURES, **options)


def make_all(results: str | Path | None = None, out: str | Path | None = None, **options: Any) -> dict[str, list[Path] | str]:
    """Every figure whose inputs exist: name -> written files, or the reason it was skipped."""
    done: dict[str, list[Path] | str] = {}
    for name in FIGURES:
        try:
            done[name] = make(name, results, out, **options)
        except WorkbenchError as e:
            done[name] = str(e)
    return done


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m analysis.figures", description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help=f"figures to make (default: all): {', '.join(FIGURES)}")
    p.add_argument("--results", default=None, help="results folder (default: the repository's results/)")
    p.add_argument("--out", default=None,
                   help=f"output folder (default {load.display(SCRATCH_FIGURES)}; results/figures refreshes the committed ones)")
    p.add_argument("--run", default=None, help=f"benchmark run for the speedup figure (default {REFERENCE_RUN}); throughput run for batching (default: newest)")
    p.add_argument("--tree", default=None, help="tree name or JSON for the tree figure (default: trees/default.json)")
    p.add_argument("--calibration", default=None, help="calibration folder name (default: the shipped heads')")
    p.add_argument("--temperature", type=float, default=None, help="temperature of the eps sweep (default: most eps values)")
    p.add_argument("--list", action="store_true", help="list the figures and exit")
    a = p.parse_args(argv)
    if a.list:
        for name, spec in FIGURES.items():
            print(f"{name:14s} {spec.title}")
        return 0
    results = load.results_path(a.results)
    if not results.is_dir():
        raise WorkbenchError(f"results folder not found: {results}")
    out = Path(a.out) if a.out else SCRATCH_FIGURES
    options = {"run": a.run, "tree": a.tree, "calibration": a.calibration, "temperature": a.temperature}
    unknown = [n for n in a.names if n not in FIGURES]
    if unknown:
        raise WorkbenchError(f"unknown figure {unknown[0]!r} (known: {', '.join(FIGURES)})")
    if a.names:
        for name in a.names:
            paths = make(name, results, out, **options)
            print(f"made {name}: {', '.join(load.display(q) for q in paths)}")
        return 0
    for name, res in make_all(results, out, **options).items():
        if isinstance(res, str):
            print(f"skipped {name}: {res}")
        else:
            print(f"made {name}: {', '.join(load.display(q) for q in res)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
