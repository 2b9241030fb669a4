"""Tree search under a node budget: the library entry `search(...)` and the CLI `python -m trees.search`.

Methods (each lives in its own module; this one picks the inputs, dispatches and writes files):

- ``greedy``: the Medusa paper's tree, best under the independence model (`trees.best_first`);
- ``empirical``: the tree best under the empirical joint model of the calibration (`trees.best_first`);
- ``optuna``: hardware-aware, the tree with the most predicted tokens per second on this machine's
  latency profile (`trees.optuna_search`); with ``--pareto`` a two-objective study (tokens per
  step up, verify time down) whose front is written to ``<tree file stem>_pareto.csv`` beside the
  tree (figure: ``python -m analysis.figures pareto``). With ``--batch-size B`` (batched decoding)
  it reads T(B, N) from the profile (`bench.latency --batch-sizes`) and maximises the batch's
  tokens per second, B x tokens per step / T(B, N); ``--batch-size 1,2,4,8,16`` searches each batch
  size in its own study and prints the best node budget per batch size (`search_batches`).

The accuracy input is the calibration of a heads folder (``--heads``, default the shipped heads:
``results/calibration/<heads name>/accuracy.csv`` with ``paths.csv`` and ``ranks.parquet`` beside
it, from ``python -m bench.calibrate``), else those heads' own cumulative top-k table
(independence model only), or any ``--accuracy FILE`` (`trees.inputs`). No model is run.

CLI::

    python -m trees.search --budget 64                       # greedy: prints, writes results/_scratch/trees/greedy_64.json
    python -m trees.search --budget 64 --method empirical --plot /tmp/tree.png
    python -m trees.search --budget 32 --max-depth 3 --top-k 8,4,2 --format medusa_choices
    python -m trees.search --method optuna --budget 64 --trials 50   # study in results/_scratch/optuna.db
    python -m trees.search --method optuna --pareto --budget 64 --trials 150 --name pareto_64
    python -m trees.search --budget 64 --out results/trees/greedy_64.json   # refresh a committed tree
    python -m trees.search --method optuna --budget 64 --set-default        # ... or the shipped default
    python -m trees.search --method optuna --budget 64 --batch-size 1,2,4,8,16   # one tree per batch size

Where it writes: a plain search writes ``results/_scratch/trees/<name>.json`` (git-ignored), so it
never changes a committed tree; ``--out FILE`` names any file (``results/trees/...`` refreshes a
committed one) and ``--set-default`` also writes ``results/trees/default.json``, the tree
``medusa.generate`` and ``bench.run`` decode with when given none. An Optuna study persists in
``--storage`` (default ``results/_scratch/optuna.db``); a search whose study already exists continues
it and says so on stderr (study name, trials so far). At a batch size B > 1 the tree is named
``<name>_b<B>`` and every file name and ``--study`` name gains the same ``_b<B>`` (``--out t.json``
-> ``t_b8.json``, its front ``t_b8_pareto.csv``); batch-1 names are unchanged, and ``--set-default``
writes the batch-1 tree.

Bad input (budget < 1, budget beyond the tree space, missing or malformed accuracy file, unknown
method, a plot file of an unknown format, a batch size the latency profile lacks) prints one line
``error: ...`` and exits with status 2, before anything is written.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from common.cli import Parser, comma_list, quiet_libraries, run_cli
from common.errors import WorkbenchError
from common.io import display, write_csv
from common.paths import DEFAULT_TREE_FILE, LATENCY_DIR, OPTUNA_DB, SCRATCH_LATENCY, SCRATCH_TREES
from common.provenance import Provenance
from trees.best_first import BEST_FIRST, ParetoPoint, SearchResult, TopK, search_tree, space_size
from trees.inputs import AccuracyInputs, resolve_accuracy
from trees.optuna_search import (
    OptunaConfig,
    batch_name,
    check_batch_size,
    monotone_verify_times,
    optuna_search,
    pareto_table,
    resolve_profile,
)
from trees.plot import check_plot_path, plot_tree
from trees.tree import Tree

METHODS = (*BEST_FIRST, "optuna")
FORMATS = ("text", "json", "medusa_choices")
# CLI flag -> `optuna_search` keyword, for the flags that only the optuna method takes.
OPTUNA_FLAGS = {"trials": "n_trials", "min_budget": "min_budget", "storage": "storage", "study": "study_name",
                "latency": "profile", "context": "context", "inner": "inner", "pareto": "pareto",
                "batch_size": "batch_size"}

# The search's public names, re-exported so callers import one module.
__all__ = ["METHODS", "AccuracyInputs", "ParetoPoint", "SearchResult", "batch_name", "batch_summary", "main",
           "parse_batch_sizes", "parse_top_k", "resolve_accuracy", "search", "search_batches", "search_inputs",
           "search_tree", "space_size", "summary"]


# ---- library ------------------------------------------------------------------------------------
def search_inputs(inputs: AccuracyInputs, method: str, node_budget: int, max_depth: int | None = None,
                  top_k: TopK = None, batch_size: int | None = None, **kw: Any) -> SearchResult:
    """Search a tree with `method` under `node_budget` (root included) on already-resolved inputs.

    `batch_size` (optuna only, the one method that reads verify times): rows verified per step
    (default `OptunaConfig.batch_size`, 1); the search scores trees with the profile's
    T(batch_size, N). Keywords: `name`, and for `optuna`
    those of `trees.optuna_search.optuna_search`.
    """
    if method not in METHODS:
        raise WorkbenchError(f"unknown method {method!r} (use one of {', '.join(METHODS)})")
    if not isinstance(node_budget, int) or isinstance(node_budget, bool):
        raise WorkbenchError(f"node budget must be an integer, got {node_budget!r}")
    if node_budget < 1:
        raise WorkbenchError(f"node budget must be >= 1 (the root alone), got {node_budget}")
    if batch_size is not None and check_batch_size(batch_size) != 1 and method != "optuna":
        raise WorkbenchError(f"batch size applies to --method optuna only ({method} reads no verify times)")
    if method == "optuna":
        return optuna_search(inputs, max_budget=node_budget, max_depth=max_depth, top_k=top_k,
                             batch_size=batch_size, **kw)
    name = kw.pop("name", None)
    if kw:
        raise WorkbenchError(f"unknown option(s) for method {method}: {', '.join(sorted(kw))}")
    return search_tree(method, node_budget, inputs.marginals, inputs.stats, max_depth, top_k, name, inputs.source,
                       inputs.replay)


def search(
    method: str = "greedy",
    node_budget: int = 64,
    accuracy: str | os.PathLike | pd.DataFrame | None = None,
    max_depth: int | None = None,
    top_k: TopK = None,
    batch_size: int | None = None,
    **kw: Any,
) -> SearchResult:
    """Search a tree with `method` under `node_budget` (root included).

    `accuracy`: accuracy CSV path or DataFrame; None = the calibration of `heads` (a heads folder,
    default the shipped heads). `batch_size` (optuna): rows verified per step, see `search_inputs`.
    Keywords: `paths` / `ranks` (empirical and replay model inputs, see
    `trees.inputs.resolve_accuracy`), `heads`, `name`, and for `optuna` those of `optuna_search`
    (`profile`, `n_trials`, `storage`, `study_name`, `min_budget`, `context`, `inner`, `pareto`,
    `seed`, `notify`).
    """
    if method not in METHODS:
        raise WorkbenchError(f"unknown method {method!r} (use one of {', '.join(METHODS)})")
    inputs = resolve_accuracy(accuracy, kw.pop("paths", None), kw.pop("ranks", None), kw.pop("heads", None))
    return search_inputs(inputs, method, node_budget, max_depth, top_k, batch_size, **kw)


def search_batches(inputs: AccuracyInputs, batch_sizes: Sequence[int], node_budget: int,
                   max_depth: int | None = None, top_k: TopK = None, name: str | None = None,
                   study_name: str | None = None, **kw: Any) -> dict[int, SearchResult]:
    """The hardware-aware (optuna) search once per batch size: {batch size: its best tree}.

    Each batch size scores trees with the profile's T(B, N) in a study of its own; the tree of
    batch B > 1 is named `batch_name(name, B)` (default name `optuna_<budget>`), and so is a given
    `study_name`. Other keywords as for `trees.optuna_search.optuna_search`.
    """
    if not batch_sizes or len(set(batch_sizes)) != len(batch_sizes):
        raise WorkbenchError(f"batch sizes must be distinct and at least one, got {list(batch_sizes)}")
    latency, _ = resolve_profile(kw.get("profile"))
    for batch in batch_sizes:  # a batch size the profile lacks fails here, before any study runs
        monotone_verify_times(latency, 1, kw.get("context"), check_batch_size(batch))
    name = name or f"optuna_{node_budget}"
    return {batch: search_inputs(inputs, "optuna", node_budget, max_depth, top_k, batch, name=batch_name(name, batch),
                                 study_name=None if study_name is None else batch_name(study_name, batch), **kw)
            for batch in batch_sizes}


# ---- CLI ----------------------------------------------------------------------------------------
def parse_top_k(text: str | None) -> TopK:
    """`--top-k`: one integer (every depth) or one per depth, comma-separated."""
    if text is None:
        return None
    vals = comma_list(text, int, flag="--top-k")
    if not vals:
        raise WorkbenchError(f"--top-k is empty: {text!r}")
    return vals[0] if len(vals) == 1 and "," not in text else vals


def parse_batch_sizes(text: str | None) -> tuple[int, ...]:
    """`--batch-size`: one positive integer or several, comma-separated and distinct (default
    `OptunaConfig.batch_size`)."""
    if text is None:
        return (OptunaConfig().batch_size,)
    vals = tuple(comma_list(text, int, flag="--batch-size"))
    if not vals or min(vals) < 1 or len(set(vals)) != len(vals):
        raise WorkbenchError(f"--batch-size: expected distinct positive integers, got {text!r}")
    return vals


def summary(result: SearchResult) -> str:
    """The text the CLI prints: shape, predictions, speed and (Pareto search) the front."""
    t = result.tree
    lines = [
        f"tree {t.name}: method {result.method}, node budget {t.node_budget}, depth {t.depth}"
        f" (accuracy: {result.accuracy_source or 'given'})",
        f"  nodes per depth: {' '.join(map(str, t.nodes_per_depth())) or '-'}",
        f"  width per depth: {' '.join(map(str, t.width_per_depth())) or '-'}",
    ]
    pred = [f"independence {result.predicted_independence:.3f}"]
    pred.append(
        f"empirical {result.predicted_empirical:.3f}" if result.predicted_empirical is not None
        else "empirical n/a (no path statistics)"
    )
    if result.predicted_replay is not None:
        pred.append(f"replay {result.predicted_replay:.3f}")
    lines.append(f"  predicted tokens per step: {', '.join(pred)}")
    batch = int(result.extra.get("batch", 1))
    if result.predicted_tokens_per_s is not None and batch > 1:
        lines.append(
            f"  predicted tokens/s at batch {batch}: {result.predicted_tokens_per_s:.1f} over all rows, "
            f"{result.predicted_tokens_per_s / batch:.1f} per row (verify {result.verify_s * 1e3:.2f} ms per step "
            f"of {batch} rows; study {result.study_name})"
        )
    elif result.predicted_tokens_per_s is not None:
        lines.append(
            f"  predicted tokens/s: {result.predicted_tokens_per_s:.1f} (verify {result.verify_s * 1e3:.2f} ms"
            f" per step; study {result.study_name})"
        )
    if len(result.pareto) > 1:
        lines.append(f"  Pareto front: {len(result.pareto)} trees (tokens/step against verify time)")
        for pt in result.pareto:
            a = pt.attrs
            lines.append(f"    trial {pt.trial}: {pt.tree.node_budget if pt.tree else '?'} nodes, "
                         f"{a.get('tokens_per_step', float('nan')):.3f} tokens/step, "
                         f"verify {1e3 * a.get('verify_s', float('nan')):.2f} ms, "
                         f"{a.get('tokens_per_s', float('nan')):.1f} tokens/s")
    lines.append(f"  search time: {result.search_s:.3f} s")
    return "\n".join(lines)


def batch_summary(results: dict[int, SearchResult]) -> str:
    """The best node budget per batch size, one line each (tokens/s over all rows and per row)."""
    lines = ["best node budget per batch size (B x tokens per step / T(B, N)):",
             "  batch  node budget  depth  tokens/step  verify ms  tokens/s  per row"]
    for batch, r in results.items():
        tokens = r.tree.meta.get("tokens_per_step", float("nan"))
        tps = r.predicted_tokens_per_s if r.predicted_tokens_per_s is not None else float("nan")
        verify = r.verify_s if r.verify_s is not None else float("nan")
        lines.append(f"  {batch:5d}  {r.tree.node_budget:11d}  {r.tree.depth:5d}  {tokens:11.3f}  {verify * 1e3:9.2f}"
                     f"  {tps:8.1f}  {tps / batch:7.1f}")
    return "\n".join(lines)


def build_parser() -> Parser:
    p = Parser(prog="python -m trees.search", description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=int, default=64, help="node budget, root included (optuna: the largest tried)")
    p.add_argument("--method", default="greedy", help=f"one of {', '.join(METHODS)}")
    p.add_argument("--heads", default=None,
                   help="heads folder whose calibration is read (default: the shipped heads)")
    p.add_argument("--accuracy", default=None, help="accuracy CSV (head,rank0,accuracy,count or head,topk,accuracy,count)")
    p.add_argument("--paths", default=None, help="path statistics CSV (default: paths.csv beside the accuracy file)")
    p.add_argument("--max-depth", type=int, default=None)
    p.add_argument("--top-k", default=None, help="rank cap: one integer, or one per depth (10,5,3)")
    p.add_argument("--format", default="text", help=f"stdout: {', '.join(FORMATS)}")
    p.add_argument("--name", default=None, help="tree name and file stem (default <method>_<budget>)")
    p.add_argument("--out", default=None,
                   help=f"tree JSON path (default {display(SCRATCH_TREES)}/<name>.json; results/trees/... refreshes a "
                        "committed tree; batch B > 1 writes <stem>_b<B>.json)")
    p.add_argument("--set-default", action="store_true",
                   help=f"also write the (batch-1) tree to {display(DEFAULT_TREE_FILE)} (what generate and bench load)")
    p.add_argument("--plot", default=None, help="draw the tree (.png, .pdf or .svg)")
    g = p.add_argument_group("optuna")
    g.add_argument("--trials", type=int, default=None, help="trials to run in this process")
    g.add_argument("--min-budget", type=int, default=None)
    g.add_argument("--storage", default=None,
                   help=f"database URL, .db file or .log journal file (default {display(OPTUNA_DB)}); an existing study is continued")
    g.add_argument("--study", default=None, help="study name (default derived from calibration, device, space)")
    g.add_argument("--latency", default=None,
                   help=f"latency CSV (default {display(LATENCY_DIR)}/<this device>.csv, else {display(SCRATCH_LATENCY)}/<this device>.csv)")
    g.add_argument("--context", type=int, default=None, help="context length at which verify time is read")
    g.add_argument("--inner", default=None, help="tree builder inside each trial: empirical (default) or greedy")
    g.add_argument("--pareto", action="store_true", default=None,
                   help="two objectives (tokens/step, verify time); writes the front to <tree stem>_pareto.csv")
    g.add_argument("--batch-size", default=None,
                   help="rows verified per step (default 1), or several (1,2,4,8,16): one search and one tree "
                        "(<name>_b<B>) per batch size, scored with the profile's T(B, N)")
    return p


def check_args(args: Any) -> dict[str, Any]:
    """Every flag check that needs no table, so bad usage fails before any work; the search keywords."""
    if args.format not in FORMATS:
        raise WorkbenchError(f"unknown --format {args.format!r} (use {', '.join(FORMATS)})")
    if args.method not in METHODS:
        raise WorkbenchError(f"unknown method {args.method!r} (use one of {', '.join(METHODS)})")
    if args.plot:
        check_plot_path(args.plot)
    given = {flag: getattr(args, flag) for flag in OPTUNA_FLAGS if getattr(args, flag) is not None}
    if given and args.method != "optuna":
        raise WorkbenchError(f"--{next(iter(given)).replace('_', '-')} applies to --method optuna only")
    kw = {OPTUNA_FLAGS[flag]: value for flag, value in given.items()}
    batches = parse_batch_sizes(kw.pop("batch_size", None))
    if len(batches) > 1 and args.format != "text":
        raise WorkbenchError(f"--format {args.format} prints one tree: give one --batch-size (got {len(batches)})")
    if args.set_default and 1 not in batches:
        raise WorkbenchError("--set-default writes the batch-1 tree (what generate and bench load): "
                             "include 1 in --batch-size")
    kw["batch_sizes"] = batches
    return kw


def batch_path(path: Path, batch: int) -> Path:
    """Where batch `batch`'s file goes: `path` at batch 1, else `<stem>_b<batch><suffix>` beside it."""
    return path if batch == 1 else path.with_name(batch_name(path.stem, batch) + path.suffix)


def tree_record(result: SearchResult, name: str, argv: Sequence[str] | None, provenance: Provenance) -> Tree:
    """The searched tree with the file's meta: when and how it was made, and where."""
    meta = dict(result.tree.meta)
    meta.update({"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "command": "python -m trees.search " + " ".join(sys.argv[1:] if argv is None else argv),
                 "provenance": provenance.as_dict()})
    return Tree.from_paths(result.tree.paths, name=name, meta=meta)


def pareto_file(tree_file: Path) -> Path:
    """Where a Pareto search's front goes: `<tree stem>_pareto.csv` beside the tree file."""
    return tree_file.with_name(f"{tree_file.stem}_pareto.csv")


def write_pareto(result: SearchResult, path: Path, provenance: Provenance) -> Path:
    """The front as a table, each row with the study, its inputs (accuracy table, latency profile)
    and the provenance columns."""
    table = pareto_table(result)
    table["study"] = result.study_name
    table["accuracy"] = result.accuracy_source
    table["latency"] = result.tree.meta.get("device")
    for key, value in provenance.as_dict().items():
        table[key] = value
    return write_csv(table, path)


def print_result(result: SearchResult, tree: Tree, args: Any, written: Sequence[Path]) -> None:
    if args.format == "medusa_choices":
        print(json.dumps(tree.medusa_choices()))
    elif args.format == "json":
        print(tree.to_json())
    else:
        print(summary(result))
        print("  wrote " + " and ".join(display(p) for p in written))


def write_result(result: SearchResult, inputs: AccuracyInputs, args: Any, argv: Sequence[str] | None,
                 provenance: Provenance, name: str, batch: int) -> tuple[Tree, list[Path]]:
    """Write the files of batch `batch`'s search (tree, default tree at batch 1, front, plot);
    returns (the tree as written, the paths written)."""
    name = batch_name(name, batch)
    tree = tree_record(result, name, argv, provenance)
    out = batch_path(Path(args.out), batch) if args.out else SCRATCH_TREES / f"{name}.json"
    try:
        written = [tree.save(out)]
        if args.set_default and batch == 1:
            written.append(tree.save(DEFAULT_TREE_FILE))
        if args.pareto:
            written.append(write_pareto(result, pareto_file(out), provenance))
        if args.plot:
            written.append(plot_tree(tree, inputs.stats if inputs.stats is not None else inputs.marginals,
                                     batch_path(Path(args.plot), batch)))
    except OSError as e:
        raise WorkbenchError(f"cannot write the search's files: {e}") from None
    return tree, written


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kw = check_args(args)
    batches = kw.pop("batch_sizes")
    if args.method == "optuna":
        import optuna  # noqa: F401  (loaded before the search so that quiet_libraries lowers its log level)

        quiet_libraries()
        kw["notify"] = lambda message: print(message, file=sys.stderr)
    name = args.name or f"{args.method}_{args.budget}"
    inputs = resolve_accuracy(args.accuracy, args.paths, heads=args.heads)
    top_k = parse_top_k(args.top_k)
    if args.method == "optuna":
        results = search_batches(inputs, batches, args.budget, args.max_depth, top_k, name=name,
                                 study_name=kw.pop("study_name", None), **kw)
    else:
        results = {1: search_inputs(inputs, args.method, args.budget, args.max_depth, top_k, name=name, **kw)}
    provenance = Provenance.collect()
    for batch, result in results.items():
        tree, written = write_result(result, inputs, args, argv, provenance, name, batch)
        print_result(result, tree, args, written)
    if len(results) > 1:
        print(batch_summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
