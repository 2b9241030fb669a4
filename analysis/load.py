"""Read benchmark runs and training logs under results/ with schema checks, for figures, tables, notebooks.

Nothing here runs a model or writes under results/. A missing input raises `MissingResult`, whose
one-line message names the command that makes it; a file with the wrong columns raises
`WorkbenchError` naming the file and the columns it lacks. The readers are split by what they
read: this module (benchmark runs, head training logs, and the helpers the others share),
`analysis.load_calibration` (calibration tables, head accuracy, trees, validation) and
`analysis.load_latency` (latency profiles).

What is read here, and from where (paths relative to the results folder):

- ``bench/<run>/records.csv`` (+ ``tokens.jsonl``, ``run.json``): one row per answer, schema
  `bench.records.COLUMNS` (older schemas upgraded on read by `bench.records`);
  ``bench/<run>/summary.csv`` (tidy ``method, category, metric, value, lo, hi, n``) when it is
  current (at least as new as the records, or counting the same records per method), else the same
  summary computed in memory with `bench.summarize.summarize_frame` (so a run that was never
  summarised still plots). The main comparison is the run named `common.paths.REFERENCE_RUN`
  (``mtbench-ref``, made by ``make bench``) unless a caller names another (`pick_run`, ``--run``):
  never the biggest run or whatever sits in a default folder.
- ``heads/<heads>/`` training logs (`medusa.train`).

Method names are never written here: the reference method and the speedup baselines are
`bench.summarize.REFERENCE` / `BASELINES`, method traits come from the records (`greedy`, `tree`).

    from analysis import load
    runs = load.load_runs("results")
    sweep = load.sweep_frame(runs)            # one row per (run, method, metric) with its config
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import records as R
from bench.summarize import REFERENCE, summarize_frame
from common.errors import MissingResult, WorkbenchError
from common.io import display, read_csv
from common.paths import REFERENCE_RUN, RESULTS
from medusa.train.record import upgrade_training_record

DEFAULT_RESULTS = RESULTS
SUMMARY_RESAMPLES = 1000

# Columns each reader needs; tests check they are a subset of the writers' schemas.
SUMMARY_REQUIRED = ("method", "category", "metric", "value", "lo", "hi")
CONFIG_COLUMNS = ("tree", "node_budget", "temperature", "posterior_threshold", "posterior_alpha", "greedy",
                  "backbone", "heads", "device_name", "threads", "dtype", "commit", "source")


def results_path(results: str | os.PathLike | None) -> Path:
    return Path(results) if results is not None else DEFAULT_RESULTS


def read_table(path: Path, required: Sequence[str], command: str, what: str) -> pd.DataFrame:
    """A CSV (or parquet) with `required` columns; MissingResult naming `command` if absent."""
    return read_csv(path, what, required, command=command)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object, or {} when the file is absent (provenance that is nice to have)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorkbenchError(f"{display(path)} is not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def note(message: str) -> None:
    """One informational line on stderr (a skipped input that does not stop a figure)."""
    print(f"note: {message}", file=sys.stderr)


# ---- benchmark runs -----------------------------------------------------------------------------
# The default methods of bench.run are the main comparison; `make bench` makes the reference run
# with the README's settings (all questions, both turns, two shards).
BENCH_COMMAND = f"python -m bench.run --prompts mtbench --out results/bench/{REFERENCE_RUN}"


@dataclass
class Run:
    """One benchmark run folder: its records, tidy summary and run.json."""

    name: str
    dir: Path
    records: pd.DataFrame
    summary: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(self.records["method"]))


def bench_dirs(results: str | os.PathLike | None = None) -> list[Path]:
    """Run folders (those holding a records.csv) under results/bench, sorted by name."""
    root = results_path(results) / "bench"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "records.csv").is_file())


def _summary_counts(summary: pd.DataFrame) -> dict[str, int]:
    rows = summary[(summary["metric"] == "records") & (summary["category"].astype(str) == "all")]
    return {str(m): int(v) for m, v in zip(rows["method"], rows["value"])}


def load_summary(run_dir: Path, records: pd.DataFrame | None = None) -> pd.DataFrame:
    """summary.csv if it is current, else `bench.summarize.summarize_frame` in memory.

    Current: at least as new as records.csv, or (time stamps are not kept by git) counting the
    same records per method as `records`.
    """
    summary_path, records_path = run_dir / R.SUMMARY_FILE, run_dir / R.RECORDS_FILE
    if summary_path.is_file():
        summary = read_table(summary_path, SUMMARY_REQUIRED, f"python -m bench.summarize {display(run_dir)}",
                             "benchmark summary")
        newer = summary_path.stat().st_mtime >= records_path.stat().st_mtime
        counts = records["method"].value_counts().to_dict() if records is not None else None
        if newer or counts == _summary_counts(summary):
            return summary
    frame, tokens, _ = R.load_run(run_dir)
    if frame.empty:
        raise WorkbenchError(f"run {display(run_dir)} holds no records yet")
    summary, _ = summarize_frame(frame, tokens, resamples=SUMMARY_RESAMPLES, seed=0)
    return summary


def load_run(run_dir: str | os.PathLike) -> Run:
    """Records (schema-checked by `bench.records`), summary and run.json of one run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / R.RECORDS_FILE).is_file():
        raise MissingResult(f"no benchmark records in {display(run_dir)} (run `{BENCH_COMMAND}` first)")
    rows = R.read_records_csv(run_dir / R.RECORDS_FILE)
    if not rows:
        raise WorkbenchError(f"run {display(run_dir)} holds no records yet")
    records = pd.DataFrame(rows, columns=list(R.COLUMNS))
    return Run(run_dir.name, run_dir, records, load_summary(run_dir, records), R.read_run_json(run_dir) or {})


def load_runs(results: str | os.PathLike | None = None, quiet: bool = False) -> list[Run]:
    """Every readable run under results/bench; an unreadable one is skipped with a note."""
    runs = []
    for d in bench_dirs(results):
        try:
            runs.append(load_run(d))
        except WorkbenchError as e:
            if not quiet:
                note(f"skipping run {d.name}: {e}")
    return runs


def pick_run(runs: Sequence[Run], name: str | None = None, need: Iterable[str] = (REFERENCE,)) -> Run:
    """The run called `name` (its folder name or path), default the reference run `REFERENCE_RUN`.

    Chosen by name only, so a trial run (say two prompts in results/bench/mtbench) never replaces
    the reference. The run must hold every method of `need` and one more to compare them with.
    """
    name = REFERENCE_RUN if name is None else name
    found = [r for r in runs if r.name == name or str(r.dir) == name]
    if not found:
        others = ", ".join(r.name for r in runs) or "none"
        how = f"run `{BENCH_COMMAND}` first, or name another with --run NAME; " if name == REFERENCE_RUN else ""
        raise MissingResult(f"no benchmark run named {name!r} ({how}runs there: {others})")
    run, need = found[0], tuple(need)
    if not set(need) <= set(run.methods) or not set(run.methods) - set(need):
        raise MissingResult(f"run {run.name} does not compare {', '.join(need)} with another method "
                            f"(it holds {', '.join(run.methods)}; name another with --run NAME)")
    return run


def mode_value(values: pd.Series) -> Any:
    """Most common non-empty value of a column (None if there is none)."""
    v = values.dropna()
    v = v[v.astype(str) != ""]
    return v.mode().iloc[0] if len(v) else None


def caption_from_records(records: pd.DataFrame, source: str) -> str:
    """``device ... | model ... | source`` from the provenance columns of benchmark records."""
    device = mode_value(records["device_name"]) or "unknown device"
    threads = mode_value(records["threads"])
    dtype = mode_value(records["dtype"]) or ""
    backbone = mode_value(records["backbone"]) or "unknown model"
    heads = mode_value(records["heads"])
    commits = sorted({str(c) for c in records["commit"].dropna() if str(c)})
    parts = [f"device: {device}" + (f", {int(threads)} thread{'s' if int(threads) != 1 else ''}" if threads is not None else "")
             + (f", {dtype}" if dtype else ""),
             f"model: {backbone}" + (f" + heads {Path(str(heads)).name}" if heads else ""),
             source]
    if commits:
        parts.append("commit " + ", ".join(commits[:2]) + (" ..." if len(commits) > 2 else ""))
    return " | ".join(parts)


def tree_family(name: Any) -> str:
    """`plain` (root only), `chain`, `dense`, `paper` (mc_sim_7b_63) or `sparse` (searched/other)."""
    name = "" if name is None or (isinstance(name, float) and np.isnan(name)) else str(name)
    if name in ("", "root"):
        return "plain"
    if name.startswith("chain_"):
        return "chain"
    if name.startswith("dense_"):
        return "dense"
    if name == "mc_sim_7b_63":
        return "paper"
    return "sparse"


def sweep_frame(runs: Sequence[Run], category: str = "all") -> pd.DataFrame:
    """One row per (run, method, metric) of `category`: value, lo, hi, n and the method's config.

    Config columns (tree, node_budget, temperature, eps = posterior_threshold, delta =
    posterior_alpha, provenance) come from the method's records in that run; `family` is
    `tree_family(tree)`; `tree_method` is the search method recorded in run.json for the tree.
    """
    parts = []
    for run in runs:
        s = run.summary[run.summary["category"].astype(str) == category]
        if s.empty:
            continue
        run_tree = (run.info.get("identity") or {}).get("tree") or {}
        for method, g in s.groupby("method", sort=False):
            recs = run.records[run.records["method"] == method]
            if recs.empty:
                continue
            first = recs.iloc[0]
            g = g.copy()
            g["run"] = run.name
            for c in CONFIG_COLUMNS:
                g[c] = first[c]
            g["family"] = tree_family(first["tree"])  # methods without a tree (empty) are plain
            same_tree = str(first["tree"]) == str(run_tree.get("name"))
            g["tree_method"] = str((run_tree.get("meta") or {}).get("method", "")) if same_tree else ""
            parts.append(g)
    if not parts:
        return pd.DataFrame(columns=[*SUMMARY_REQUIRED, "n", "run", *CONFIG_COLUMNS, "family", "tree_method"])
    return pd.concat(parts, ignore_index=True)


def wide(sweep: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Pivot `sweep_frame` rows to one row per (run, method): `<metric>`, `<metric>_lo`, `<metric>_hi`,
    and `n` (the most prompt turns behind any of the method's metrics)."""
    keys = ["run", "method", *CONFIG_COLUMNS, "family", "tree_method"]
    base = sweep.drop_duplicates(["run", "method"])[keys].set_index(["run", "method"])
    if "n" in sweep.columns:
        base["n"] = pd.to_numeric(sweep["n"], errors="coerce").groupby([sweep["run"], sweep["method"]]).max()
    for m in metrics:
        sub = sweep[sweep["metric"] == m].set_index(["run", "method"])
        for col, suffix in (("value", ""), ("lo", "_lo"), ("hi", "_hi")):
            base[m + suffix] = sub[col].reindex(base.index).astype(float)
    return base.reset_index()


# ---- head training ------------------------------------------------------------------------------
TRAIN_COMMAND = "python -m medusa.train"


def heads_dirs(results: str | os.PathLike | None = None) -> list[Path]:
    """Heads folders under results/heads that hold a training loss log."""
    root = results_path(results) / "heads"
    dirs = sorted(p.parent for p in root.glob("*/loss.csv")) if root.is_dir() else []
    if not dirs:
        raise MissingResult(f"no training log (loss.csv) under {display(root)} (run `{TRAIN_COMMAND}` first)")
    return dirs


@dataclass(frozen=True)
class Training:
    """A heads folder's training logs (`medusa.train`): loss per step, top-1 history, provenance."""

    dir: Path
    loss: pd.DataFrame  # step, loss, lr, loss_head1..K
    history: pd.DataFrame | None  # accuracy_history.csv: step, head, topk, accuracy, count
    meta: dict[str, Any]  # device, threads, dtype, backbone, commit (what the files say)

    def head_loss_columns(self) -> dict[int, str]:
        """Head number (1-based) -> its loss column."""
        cols = {int(c.removeprefix("loss_head")): c for c in self.loss.columns
                if c.startswith("loss_head") and c.removeprefix("loss_head").isdigit()}
        return dict(sorted(cols.items()))


def load_training(heads_dir: Path) -> Training:
    """Read loss.csv, accuracy_history.csv (if present), training_record.json and config.json."""
    loss = read_table(heads_dir / "loss.csv", ("step", "loss"), TRAIN_COMMAND, "training log")
    hist_path = heads_dir / "accuracy_history.csv"
    history = read_table(hist_path, ("step", "head", "topk", "accuracy", "count"), TRAIN_COMMAND,
                         "accuracy history") if hist_path.is_file() else None
    # Older records (top-level git_commit/device/torch_threads) are read in the current schema.
    record = upgrade_training_record(read_json(heads_dir / "training_record.json"))
    config = read_json(heads_dir / "config.json")
    train_config = record.get("config") or {}
    provenance = record.get("provenance") or {}
    backbone = train_config.get("backbone") or (config.get("backbone") or {}).get("name")
    meta = {
        "device": provenance.get("device_name") or train_config.get("device"),
        "threads": provenance.get("threads"),
        "dtype": train_config.get("proj_dtype") or train_config.get("dtype"),
        "backbone": backbone,
        "commit": provenance.get("commit"),
        "steps": train_config.get("steps"),
    }
    return Training(heads_dir, loss, history, {k: v for k, v in meta.items() if v not in (None, "")})
