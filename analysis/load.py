"""Read the tidy files under results/ with schema checks, for the figures, tables and notebooks.

Nothing here runs a model or writes under results/. A missing input raises `MissingResult`, whose
one-line message names the command that makes it; a file with the wrong columns raises
`WorkbenchError` naming the file and the columns it lacks.

What is read, and from where (paths relative to the results folder):

- ``bench/<run>/records.csv`` (+ ``tokens.jsonl``, ``run.json``): one row per answer, schema
  `bench.records.COLUMNS`; ``bench/<run>/summary.csv`` (tidy ``method, category, metric, value,
  lo, hi, n``) when it is at least as new as the records, else the same summary computed in memory
  with `bench.summarize.summarize_frame` (so a run that was never summarised still plots).
- ``calibration/<heads>/accuracy.csv`` (``head, rank0, accuracy, count``), ``paths.csv``,
  ``calibration.json``, ``validation*.csv`` (`trees.validate`); the heads' own
  ``heads/<heads>/accuracy.csv`` (``head, topk, accuracy, count``) when there is no calibration.
- ``trees/*.json`` (`trees.tree.Tree`), ``latency/*.csv`` (`bench.latency.COLUMNS`),
  ``heads/<heads>/`` training logs (`medusa.train`).

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

from medusa.errors import WorkbenchError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO_ROOT / "results"
DEFAULT_HEADS_NAME = "smollm2-135m-medusa1"
SUMMARY_RESAMPLES = 1000

# Columns each reader needs; tests check they are a subset of the writers' schemas.
LATENCY_REQUIRED = ("device", "backbone", "dtype", "context", "n_query", "median_s", "p10_s", "p90_s",
                    "weight_bytes", "mem_bandwidth_gbs", "matmul_gflops", "floor_s")
VALIDATION_REQUIRED = ("tree", "kind", "node_budget", "predicted_independence", "predicted_empirical",
                       "measured_accepted_length")
SUMMARY_REQUIRED = ("method", "category", "metric", "value", "lo", "hi")
CONFIG_COLUMNS = ("tree", "node_budget", "temperature", "posterior_threshold", "posterior_alpha", "greedy",
                  "backbone", "heads", "device_name", "threads", "dtype", "commit", "source")


class MissingResult(WorkbenchError):
    """An input file or folder does not exist yet; the message names the command that makes it."""


def results_path(results: str | os.PathLike | None) -> Path:
    return Path(results) if results is not None else DEFAULT_RESULTS


def read_table(path: Path, required: Sequence[str], command: str, what: str) -> pd.DataFrame:
    """A CSV (or parquet) with `required` columns; MissingResult naming `command` if absent."""
    if not path.is_file():
        raise MissingResult(f"no {what} at {display(path)} (run `{command}` first)")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as e:
        raise WorkbenchError(f"{what} {display(path)} is not readable: {str(e).splitlines()[0]}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise WorkbenchError(f"{what} {display(path)} lacks columns {missing} (has {list(df.columns)})")
    if df.empty:
        raise WorkbenchError(f"{what} {display(path)} has no rows")
    return df


def display(path: str | os.PathLike) -> str:
    """`path` relative to the working directory when it lies below it (shorter captions)."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def note(message: str) -> None:
    """One informational line on stderr (a skipped input that does not stop a figure)."""
    print(f"note: {message}", file=sys.stderr)


# ---- benchmark runs -----------------------------------------------------------------------------
BENCH_COMMAND = "python -m bench.run --methods hf-greedy,ar,hf-pld,medusa --prompts mtbench --out results/bench/mtbench"


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


def load_summary(run_dir: Path, records: pd.DataFrame | None = None) -> pd.DataFrame:
    """summary.csv if it is up to date, else `bench.summarize.summarize_frame` in memory."""
    from bench import records as R

    summary_path, records_path = run_dir / R.SUMMARY_FILE, run_dir / R.RECORDS_FILE
    if summary_path.is_file() and summary_path.stat().st_mtime >= records_path.stat().st_mtime:
        return read_table(summary_path, SUMMARY_REQUIRED, f"python -m bench.summarize {display(run_dir)}", "benchmark summary")
    from bench.summarize import summarize_frame

    frame, tokens, _ = R.load_run(run_dir)
    if frame.empty:
        raise WorkbenchError(f"run {display(run_dir)} holds no records yet")
    summary, _ = summarize_frame(frame, tokens, resamples=SUMMARY_RESAMPLES, seed=0)
    return summary


def load_run(run_dir: str | os.PathLike) -> Run:
    """Records (schema-checked by `bench.records`), summary and run.json of one run folder."""
    from bench import records as R

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


def pick_run(runs: Sequence[Run], name: str | None = None, need: Iterable[str] = ("hf-greedy",)) -> Run:
    """The named run, else the main comparison: `mtbench` if it qualifies, else the run with the
    most records among those holding every method of `need` and at least one other method."""
    need = tuple(need)
    if name is not None:
        for r in runs:
            if r.name == name or str(r.dir) == name:
                return r
        raise MissingResult(f"no benchmark run named {name!r} under results/bench (run `{BENCH_COMMAND}` first)")
    ok = [r for r in runs if set(need) <= set(r.methods) and len(set(r.methods) - set(need)) >= 1]
    if not ok:
        raise MissingResult(f"no benchmark run compares {', '.join(need)} with another method (run `{BENCH_COMMAND}` first)")
    for r in ok:
        if r.name == "mtbench":
            return r
    return max(ok, key=lambda r: (len(r.records), r.name))


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
            g["family"] = tree_family(first["tree"]) if method not in ("hf-greedy", "hf-sample", "hf-pld") else "plain"
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


# ---- calibration, trees, validation -------------------------------------------------------------
CALIBRATE_COMMAND = "python -m trees.calibrate"


def calibration_dir(results: str | os.PathLike | None = None, name: str | None = None) -> Path:
    """results/calibration/<name>, default the shipped heads' calibration, else the first one found."""
    root = results_path(results) / "calibration"
    if name is not None:
        d = root / name
        if not (d / "accuracy.csv").is_file():
            raise MissingResult(f"no calibration at {display(d)} (run `{CALIBRATE_COMMAND} --heads results/heads/{name}` first)")
        return d
    found = sorted(p.parent for p in root.glob("*/accuracy.csv")) if root.is_dir() else []
    if not found:
        raise MissingResult(f"no calibration under {display(root)} (run `{CALIBRATE_COMMAND}` first)")
    for d in found:
        if d.name == DEFAULT_HEADS_NAME:
            return d
    return found[0]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object, or {} when the file is absent (provenance that is nice to have)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorkbenchError(f"{display(path)} is not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class HeadAccuracy:
    """Cumulative top-i accuracy per head (heads 1-based, i = 1..R) with 95% Wilson intervals."""

    table: pd.DataFrame  # head, topk, accuracy, lo, hi, positions
    per_rank: np.ndarray  # (K, R): P(rank0 of head k == i)
    source: Path
    meta: dict[str, Any]

    @property
    def num_heads(self) -> int:
        return int(self.per_rank.shape[0])


def wilson(p: np.ndarray, n: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """95% Wilson score interval of a proportion `p` over `n` trials (NaN where n == 0)."""
    p, n = np.asarray(p, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return np.where(n > 0, centre - half, np.nan), np.where(n > 0, centre + half, np.nan)


def head_accuracy(results: str | os.PathLike | None = None, name: str | None = None) -> HeadAccuracy:
    """From the calibration accuracy table (held-out prompts), else the heads' training report."""
    try:
        cal = calibration_dir(results, name)
        path, meta = cal / "accuracy.csv", read_json(cal / "calibration.json")
    except MissingResult:
        heads_name = name or DEFAULT_HEADS_NAME
        path = results_path(results) / "heads" / heads_name / "accuracy.csv"
        if not path.is_file():
            raise MissingResult(
                f"no head accuracy table under {display(results_path(results))} (run `{CALIBRATE_COMMAND}` first)") from None
        meta = {**read_json(path.parent / "config.json"), "source": "training report (validation split)"}
    return head_accuracy_from_file(path, meta)


def head_accuracy_from_file(path: Path, meta: dict[str, Any] | None = None) -> HeadAccuracy:
    """`HeadAccuracy` of one accuracy CSV (per-rank ``head,rank0,...`` or cumulative ``head,topk,...``)."""
    from trees.acceptance_model import load_marginals

    m = load_marginals(path)
    cum = np.cumsum(m.accuracy, axis=1)
    rows = []
    for k in range(m.num_heads):
        n = np.full(m.top_r, m.positions[k])
        lo, hi = wilson(cum[k], n)
        for i in range(m.top_r):
            rows.append((k + 1, i + 1, cum[k, i], lo[i], hi[i], int(m.positions[k])))
    table = pd.DataFrame(rows, columns=["head", "topk", "accuracy", "lo", "hi", "positions"])
    return HeadAccuracy(table, m.accuracy, Path(path), dict(meta or {}))


def calibration_caption(meta: dict[str, Any], source: Path) -> str:
    device = meta.get("device") or "unknown device"
    dtype = meta.get("dtype") or ""
    backbone = meta.get("backbone") or "unknown model"
    heads = Path(str(meta.get("heads") or source.parent.name)).name
    extra = []
    if meta.get("prompts_done") or meta.get("prompts"):
        extra.append(f"{meta.get('prompts_done') or meta.get('prompts')} prompts")
    if meta.get("positions"):
        extra.append(f"{meta['positions']} positions")
    return (f"device: {device}{', ' + dtype if dtype else ''} | model: {backbone} + heads {heads} | "
            f"source: {display(source)}" + (f" ({', '.join(extra)})" if extra else ""))


TREE_COMMAND = "python -m trees.search --budget 64 --set-default"


def tree_file(results: str | os.PathLike | None = None, name: str | None = None) -> Path:
    """results/trees/<name>.json; default the shipped default.json, else the newest tree file."""
    root = results_path(results) / "trees"
    if name is not None:
        path = Path(name) if name.endswith(".json") else root / f"{name}.json"
        if not path.is_file():
            raise MissingResult(f"no tree file {display(path)} (run `python -m trees.search --budget 64 --name {Path(name).stem}` first)")
        return path
    if (root / "default.json").is_file():
        return root / "default.json"
    found = sorted(root.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name)) if root.is_dir() else []
    if not found:
        raise MissingResult(f"no searched tree under {display(root)} (run `{TREE_COMMAND}` first)")
    return found[-1]


def acceptance_model(results: str | os.PathLike | None = None, name: str | None = None):
    """(model, kind, calibration dir): empirical path statistics if present, else the marginals."""
    from trees.acceptance_model import load_marginals, load_path_stats

    cal = calibration_dir(results, name)
    if (cal / "paths.csv").is_file():
        return load_path_stats(cal / "paths.csv"), "empirical", cal
    return load_marginals(cal / "accuracy.csv"), "independence", cal


def validation_files(results: str | os.PathLike | None = None) -> list[Path]:
    root = results_path(results) / "calibration"
    return sorted(root.glob("*/validation*.csv")) if root.is_dir() else []


def load_validation(results: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every validated tree under results/calibration, with `calibration`, `file`, `measured` and
    `measured_by` columns: `measured` is the engine's accepted length where the tree was decoded,
    else the one replayed from the decoded prompts (`trees.validate --replay`); rows with neither
    are dropped."""
    files = validation_files(results)
    if not files:
        raise MissingResult(f"no validation table under {display(results_path(results) / 'calibration')} "
                            "(run `python -m trees.validate` first)")
    parts = []
    for f in files:
        df = read_table(f, VALIDATION_REQUIRED, "python -m trees.validate", "validation table")
        df["calibration"] = f.parent.name
        df["file"] = f.name
        parts.append(df)
    v = pd.concat(parts, ignore_index=True)
    engine = pd.to_numeric(v["measured_accepted_length"], errors="coerce")
    replayed = pd.to_numeric(v.get("replayed_accepted_length", pd.Series(np.nan, index=v.index)), errors="coerce")
    v["measured"] = engine.fillna(replayed)
    v["measured_by"] = np.where(engine.notna(), "engine", "replay")
    v = v[v["measured"].notna()].reset_index(drop=True)
    if v.empty:
        raise MissingResult(f"no measured or replayed accepted length in {', '.join(display(f) for f in files)} "
                            "(run `python -m trees.validate` with --engine or --replay)")
    return v


# ---- latency ------------------------------------------------------------------------------------
def latency_files(results: str | os.PathLike | None = None) -> list[Path]:
    root = results_path(results) / "latency"
    files = sorted(root.glob("*.csv")) if root.is_dir() else []
    if not files:
        raise MissingResult(f"no latency profile under {display(root)} (run `python -m bench.latency` first)")
    return files


def load_latency(path: Path) -> pd.DataFrame:
    return read_table(path, LATENCY_REQUIRED, "python -m bench.latency", "latency profile")


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
    record, config = read_json(heads_dir / "training_record.json"), read_json(heads_dir / "config.json")
    train_config = record.get("config") or {}
    backbone = train_config.get("backbone") or (config.get("backbone") or {}).get("name")
    meta = {
        "device": record.get("device") or train_config.get("device"),
        "threads": record.get("torch_threads"),
        "dtype": train_config.get("proj_dtype") or train_config.get("backbone_dtype"),
        "backbone": backbone,
        "commit": record.get("git_commit"),
        "steps": train_config.get("steps"),
    }
    return Training(heads_dir, loss, history, {k: v for k, v in meta.items() if v not in (None, "")})
