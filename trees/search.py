"""Tree search under a node budget: greedy (the paper's), empirical-optimal, and hardware-aware Optuna.

Methods (library: `search(...) -> SearchResult`; the CLI below is a thin wrapper):

- ``greedy``: the Medusa paper's construction. Under the independence model a path's acceptance
  probability is the product of its heads' rank accuracies, which never grows from a node to its
  child, so the ``node_budget - 1`` most probable paths form a prefix-closed tree and that tree
  maximises ``1 + sum P(path)``. Found best-first with a heap; ties go to the shorter path, then the
  lexicographically smaller one, so the result is deterministic.
- ``empirical``: the same construction with the empirical joint model (the fraction of
  calibration positions whose true ranks start with the path; also non-increasing along a path),
  which gives the optimal tree under that model. Paths never seen in calibration rank after all
  seen ones, ordered by their independence probability.
- ``optuna``: hardware-aware. Each trial picks a node budget (up to ``--budget``), a maximum depth
  and a top-k cap per depth, builds the empirical-optimal (or greedy) tree in that space and
  scores predicted tokens per second ``E[tokens per step](tree) / t_verify(node_budget)``, with
  ``t_verify`` from this machine's measured latency profile (`bench.latency`, made non-decreasing
  in the node budget) and E from the replay model when the calibration's ranks table is present
  (it predicts tokens per *engine step*; see `trees.acceptance_model`), else the empirical model. With an
  `trees.validate.MeasuredAcceptance` evaluator (typical acceptance), eps and delta join
  the space and trials are scored by acceptance measured with the engine on calibration prompts;
  multi-objective mode returns the speed/quality Pareto front. Studies persist in Optuna storage:
  SQLite ``results/optuna.db`` by default, or any database URL, or a journal file (``*.log``), so
  many workers on many machines can share one study.

The accuracy input is the calibration of the shipped heads
(``results/calibration/<heads name>/accuracy.csv`` with ``paths.csv`` beside it), else the heads'
own cumulative top-k table (``results/heads/<heads name>/accuracy.csv``, independence model only).

CLI::

    python -m trees.search --budget 64                       # greedy, prints and writes results/trees/greedy_64.json
    python -m trees.search --budget 64 --method empirical --plot results/figures/tree.png
    python -m trees.search --budget 32 --max-depth 3 --top-k 8,4,2 --format medusa_choices
    python -m trees.search --method optuna --budget 256 --trials 300 --set-default

Bad input (budget < 1, budget beyond the tree space, missing or malformed accuracy file, unknown
method) prints one line ``error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from medusa.errors import WorkbenchError, run_cli
from trees.acceptance_model import (
    Marginals,
    PathStats,
    ReplayModel,
    expected_tokens,
    load_marginals,
    load_path_stats,
    load_ranks,
    marginals_from_frame,
    marginals_from_ranks,
    path_stats_from_ranks,
    replay_model_from_ranks,
)
from trees.tree import DEFAULT_TREE_FILE, REPO_ROOT, Path_, Tree

METHODS = ("greedy", "empirical", "optuna")
TREES_DIR = REPO_ROOT / "results" / "trees"
CALIBRATION_ROOT = REPO_ROOT / "results" / "calibration"
HEADS_ROOT = REPO_ROOT / "results" / "heads"
DEFAULT_HEADS_NAME = "smollm2-135m-medusa1"  # = medusa.heads.DEFAULT_HEADS_DIR.name (checked in tests)
DEFAULT_STORAGE = REPO_ROOT / "results" / "optuna.db"

TopK = int | Sequence[int] | None


@dataclass(frozen=True)
class ParetoPoint:
    """One Pareto-optimal Optuna trial: its number, objective values and parameters."""

    trial: int
    values: tuple[float, ...]
    params: dict[str, Any]


@dataclass(frozen=True)
class SearchResult:
    """A searched tree with its predicted tokens per step under both acceptance models."""

    tree: Tree
    method: str
    predicted_independence: float | None
    predicted_empirical: float | None
    search_s: float
    accuracy_source: str = ""
    predicted_tokens_per_s: float | None = None
    verify_s: float | None = None
    predicted_replay: float | None = None
    study_name: str | None = None
    storage: str | None = None
    pareto: tuple[ParetoPoint, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def node_budget(self) -> int:
        return self.tree.node_budget


@dataclass(frozen=True)
class AccuracyInputs:
    """The fitted models a search reads: marginals always, path statistics when available."""

    marginals: Marginals
    stats: PathStats | None
    source: str
    calibration_dir: Path | None = None
    replay: ReplayModel | None = None


# ---- inputs -----------------------------------------------------------------------------------
def default_calibration_dir(heads_name: str = DEFAULT_HEADS_NAME) -> Path:
    return CALIBRATION_ROOT / heads_name


def resolve_accuracy(
    accuracy: str | os.PathLike | pd.DataFrame | Marginals | None = None,
    paths: str | os.PathLike | pd.DataFrame | PathStats | None = None,
    ranks: str | os.PathLike | pd.DataFrame | None = None,
) -> AccuracyInputs:
    """Load the marginals and (when present) the path statistics a search needs.

    `accuracy=None`: the shipped calibration, else the shipped heads' cumulative table. A path:
    an accuracy CSV; `paths.csv` beside it is used for the empirical model. A DataFrame: an
    accuracy table; give `paths` (paths CSV or DataFrame) or `ranks` for the empirical model.
    """
    stats: PathStats | None = None
    replay: ReplayModel | None = None
    cal_dir: Path | None = None
    if ranks is not None:
        ranks_df = ranks if isinstance(ranks, pd.DataFrame) else load_ranks(ranks)
        stats = path_stats_from_ranks(ranks_df, source="ranks")
        replay = replay_model_from_ranks(ranks_df, source="ranks")
        if accuracy is None:
            return AccuracyInputs(marginals_from_ranks(ranks_df, stats.top_r, "ranks"), stats, "ranks", None, replay)
    if isinstance(paths, PathStats):
        stats = paths
    elif paths is not None:
        stats = load_path_stats(paths)
    if isinstance(accuracy, Marginals):
        return AccuracyInputs(accuracy, stats, accuracy.source, None, replay)
    if isinstance(accuracy, pd.DataFrame):
        return AccuracyInputs(marginals_from_frame(accuracy, "(DataFrame)"), stats, "(DataFrame)", None, replay)
    if accuracy is None:
        cal_dir = default_calibration_dir()
        acc_file = cal_dir / "accuracy.csv"
        if not acc_file.is_file():
            heads_file = HEADS_ROOT / DEFAULT_HEADS_NAME / "accuracy.csv"
            if not heads_file.is_file():
                raise WorkbenchError(
                    f"no accuracy table: neither {acc_file.relative_to(REPO_ROOT)} nor "
                    f"{heads_file.relative_to(REPO_ROOT)} exists (train heads with `python -m medusa.train`, "
                    f"then run `python -m trees.calibrate`), or pass --accuracy FILE"
                )
            acc_file, cal_dir = heads_file, None
    else:
        acc_file = Path(accuracy)
        cal_dir = acc_file.parent
    marginals = load_marginals(acc_file)
    if cal_dir is not None:
        if stats is None and (cal_dir / "paths.csv").is_file():
            stats = load_path_stats(cal_dir / "paths.csv")
        if replay is None:
            for name in ("ranks.parquet", "ranks.csv"):
                if (cal_dir / name).is_file():
                    replay = replay_model_from_ranks(load_ranks(cal_dir / name), source=_display(cal_dir / name))
                    break
    return AccuracyInputs(marginals, stats, _display(acc_file), cal_dir, replay)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def depth_caps(marginals: Marginals, max_depth: int | None, top_k: TopK) -> list[int]:
    """Per-depth rank caps (list length = usable depth), checked against the accuracy table."""
    num_heads, top_r = marginals.num_heads, marginals.top_r
    if max_depth is not None:
        if max_depth < 1:
            raise WorkbenchError(f"max depth must be >= 1, got {max_depth}")
        if max_depth > num_heads:
            raise WorkbenchError(f"max depth {max_depth} exceeds the {num_heads} heads in the accuracy table")
    depth = max_depth if max_depth is not None else num_heads
    if top_k is None:
        caps = [top_r] * depth
    elif isinstance(top_k, int):
        caps = [top_k] * depth
    else:
        caps = [int(k) for k in top_k][:depth]
        if not caps:
            raise WorkbenchError("top-k caps are empty")
    for k in caps:
        if k < 1:
            raise WorkbenchError(f"top-k must be >= 1, got {k}")
        if k > top_r:
            raise WorkbenchError(f"top-k {k} exceeds the {top_r} ranks measured in the accuracy table")
    return caps


def space_size(caps: Sequence[int]) -> int:
    """Number of paths in the tree space: sum over depths of the product of caps so far."""
    total, width = 0, 1
    for k in caps:
        width *= k
        total += width
    return total


def check_budget(node_budget: int, caps: Sequence[int]) -> None:
    if node_budget < 1:
        raise WorkbenchError(f"node budget must be >= 1 (the root alone), got {node_budget}")
    space = space_size(caps)
    if node_budget - 1 > space:
        shape = " x ".join(map(str, caps))
        raise WorkbenchError(
            f"node budget {node_budget} exceeds the tree space: depth {len(caps)} with top-k {shape} "
            f"allows {space} nodes + the root = {space + 1}"
        )


# ---- best-first construction --------------------------------------------------------------------
def best_paths(
    n_paths: int, caps: Sequence[int], key: Callable[[Path_, float], tuple[tuple, float]]
) -> list[Path_]:
    """The first `n_paths` paths in `key` order, grown best-first from the root.

    `key(path, parent_value) -> (sort key, value)`; the sort key must never decrease from a path
    to its child, so the first n paths are prefix-closed and the heap pops them in global order.
    """
    heap: list[tuple[tuple, Path_, float]] = []
    for r in range(caps[0] if caps else 0):
        k, v = key((r,), 1.0)
        heap.append((k, (r,), v))
    heapq.heapify(heap)
    out: list[Path_] = []
    while heap and len(out) < n_paths:
        _, p, v = heapq.heappop(heap)
        out.append(p)
        d = len(p)
        if d < len(caps):
            for r in range(caps[d]):
                child = p + (r,)
                k, cv = key(child, v)
                heapq.heappush(heap, (k, child, cv))
    return out


def greedy_key(marginals: Marginals) -> Callable[[Path_, float], tuple[tuple, float]]:
    acc = marginals.accuracy

    def key(path: Path_, parent: float) -> tuple[tuple, float]:
        p = parent * float(acc[len(path) - 1, path[-1]])
        return (-p, len(path), path), p

    return key


def empirical_key(marginals: Marginals, stats: PathStats) -> Callable[[Path_, float], tuple[tuple, float]]:
    acc, counts = marginals.accuracy, stats.count

    def key(path: Path_, parent: float) -> tuple[tuple, float]:
        indep = parent * float(acc[len(path) - 1, path[-1]]) if len(path) <= acc.shape[0] else 0.0
        return (-counts.get(path, 0), -indep, len(path), path), indep

    return key


def search_tree(
    method: str,
    node_budget: int,
    marginals: Marginals,
    stats: PathStats | None = None,
    max_depth: int | None = None,
    top_k: TopK = None,
    name: str | None = None,
    source: str = "",
    replay: ReplayModel | None = None,
) -> SearchResult:
    """`greedy` or `empirical` tree on already-loaded models (the core of `search`)."""
    if method not in ("greedy", "empirical"):
        raise WorkbenchError(f"unknown method {method!r} (use one of {', '.join(METHODS)})")
    if method == "empirical" and stats is None:
        raise WorkbenchError(
            "method empirical needs path statistics (paths.csv from `python -m trees.calibrate`); "
            "only a marginal accuracy table was given"
        )
    t0 = time.perf_counter()
    caps = depth_caps(marginals, max_depth, top_k)
    check_budget(node_budget, caps)
    key = greedy_key(marginals) if method == "greedy" else empirical_key(marginals, stats)
    paths = best_paths(node_budget - 1, caps, key)
    tree = Tree.from_paths(paths, name=name or f"{method}_{node_budget}")
    elapsed = time.perf_counter() - t0
    pi = expected_tokens(tree, marginals)
    pe = expected_tokens(tree, stats) if stats is not None else None
    pr = expected_tokens(tree, replay) if replay is not None else None
    meta = {
        "method": method,
        "max_depth": len(caps),
        "top_k": caps,
        "accuracy": source,
        "predicted_independence": pi,
        "predicted_empirical": pe,
        "predicted_replay": pr,
        "search_s": elapsed,
    }
    tree = Tree.from_paths(tree.paths, name=tree.name, meta=meta)
    return SearchResult(tree=tree, method=method, predicted_independence=pi, predicted_empirical=pe,
                        search_s=elapsed, accuracy_source=source, predicted_replay=pr)


def search(
    method: str = "greedy",
    node_budget: int = 64,
    accuracy: str | os.PathLike | pd.DataFrame | None = None,
    max_depth: int | None = None,
    top_k: TopK = None,
    **kw: Any,
) -> SearchResult:
    """Search a tree with `method` under `node_budget` (root included).

    `accuracy`: accuracy CSV path or DataFrame; None = the shipped calibration of the shipped heads.
    Keywords: `paths` / `ranks` (empirical model inputs when `accuracy` is a DataFrame), `name`,
    and for `optuna` those of `optuna_search` (`profile`, `n_trials`, `storage`, `study_name`,
    `min_budget`, `context`, `inner`, `evaluator`, `multi_objective`, `seed`).
    """
    if method not in METHODS:
        raise WorkbenchError(f"unknown method {method!r} (use one of {', '.join(METHODS)})")
    if not isinstance(node_budget, int) or isinstance(node_budget, bool):
        raise WorkbenchError(f"node budget must be an integer, got {node_budget!r}")
    if node_budget < 1:
        raise WorkbenchError(f"node budget must be >= 1 (the root alone), got {node_budget}")
    inputs = resolve_accuracy(accuracy, kw.pop("paths", None), kw.pop("ranks", None))
    if method == "optuna":
        return optuna_search(inputs, max_budget=node_budget, max_depth=max_depth, top_k=top_k, **kw)
    name = kw.pop("name", None)
    if kw:
        raise WorkbenchError(f"unknown option(s) for method {method}: {', '.join(sorted(kw))}")
    return search_tree(method, node_budget, inputs.marginals, inputs.stats, max_depth, top_k, name, inputs.source,
                       inputs.replay)


# ---- hardware-aware search (Optuna) ------------------------------------------------------------
@dataclass(frozen=True)
class OptunaConfig:
    """Defaults of the hardware-aware search (each defined here only)."""

    n_trials: int = 200
    measured_trials: int = 20  # default when every trial decodes prompts with the engine
    min_budget: int = 2
    inner: str = "empirical"
    seed: int = 0
    posterior_threshold_range: tuple[float, float] = (0.01, 0.5)  # eps, log-uniform
    posterior_alpha_range: tuple[float, float] = (0.05, 1.0)  # delta, log-uniform


class LatencyModel(Protocol):
    def verify_time(self, n_query: int, context: int = ...) -> float: ...


class AcceptanceEvaluator(Protocol):
    """Measures a tree with the engine (see `trees.validate.MeasuredAcceptance`)."""

    typical: bool

    def measure(self, tree: Tree, posterior_threshold: float | None = None,
                posterior_alpha: float | None = None) -> Any: ...


def open_storage(storage: Any = None) -> Any:
    """Optuna storage: None = SQLite results/optuna.db; a URL; a `*.log` journal file; a `*.db` file."""
    import optuna

    if storage is None:
        DEFAULT_STORAGE.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{DEFAULT_STORAGE}"
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    text = str(storage)
    if "://" in text:
        return text
    path = Path(text)
    if path.suffix in (".log", ".journal", ".jsonl"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path.resolve()}"
    raise WorkbenchError(
        f"storage {text!r} is neither a database URL nor a .db/.sqlite file nor a .log journal file"
    )


def resolve_profile(profile: Any) -> tuple[LatencyModel, str]:
    """(latency model, device label) from a profile object, a CSV path or None (this machine's)."""
    if profile is not None and hasattr(profile, "verify_time"):
        return profile, str(getattr(profile, "device", "") or "profile")
    from bench.latency import default_profile_path, load_profile

    path = Path(profile) if profile is not None else default_profile_path()
    return load_profile(path), path.stem


def trial_tree(
    trial: Any, inputs: AccuracyInputs, caps: Sequence[int], budgets: tuple[int, int], inner: str
) -> SearchResult:
    """The tree a trial's (node_budget, max_depth, top_k_d) parameters define; prunes infeasible ones."""
    import optuna

    budget = trial.suggest_int("node_budget", budgets[0], budgets[1], log=True)
    depth = trial.suggest_int("max_depth", 1, len(caps))
    trial_caps = [trial.suggest_int(f"top_k_{d}", 1, caps[d - 1]) for d in range(1, len(caps) + 1)][:depth]
    if budget - 1 > space_size(trial_caps):
        raise optuna.TrialPruned(f"node budget {budget} exceeds the space of top-k {trial_caps}")
    return search_tree(inner, budget, inputs.marginals, inputs.stats, depth, trial_caps, source=inputs.source,
                       replay=inputs.replay)


def monotone_verify_times(profile: LatencyModel, max_budget: int, context: int | None = None) -> list[float]:
    """Verify seconds for 1..max_budget query tokens, made non-decreasing (running maximum).

    Verifying more tokens never costs less; a dip in a measured profile is noise that a search
    would otherwise exploit.
    """
    out: list[float] = []
    for n in range(1, max_budget + 1):
        t = float(profile.verify_time(n) if context is None else profile.verify_time(n, context))
        out.append(max(t, out[-1]) if out else t)
    return out


def make_objective(
    inputs: AccuracyInputs,
    profile: LatencyModel,
    caps: Sequence[int],
    budgets: tuple[int, int],
    inner: str,
    context: int | None = None,
    evaluator: AcceptanceEvaluator | None = None,
    multi_objective: bool = False,
    config: OptunaConfig | None = None,
    verify_times: Sequence[float] | None = None,
) -> Callable[[Any], float | tuple[float, float]]:
    """The Optuna objective: predicted (or measured) tokens per second; with quality when multi.

    `verify_times` (seconds for 1..max budget tokens) defaults to `monotone_verify_times(profile)`.
    """
    config = config or OptunaConfig()
    envelope = list(verify_times) if verify_times is not None else monotone_verify_times(profile, budgets[1], context)

    def verify_s(n: int) -> float:
        return envelope[n - 1]

    def objective(trial: Any) -> float | tuple[float, float]:
        res = trial_tree(trial, inputs, caps, budgets, inner)
        t = verify_s(res.tree.node_budget)
        trial.set_user_attr("paths", res.tree.medusa_choices())
        trial.set_user_attr("verify_s", t)
        trial.set_user_attr("predicted_independence", res.predicted_independence)
        trial.set_user_attr("predicted_empirical", res.predicted_empirical)
        trial.set_user_attr("predicted_replay", res.predicted_replay)
        if evaluator is None:
            # Score with the replay model (tokens per engine step) when calibration ranks exist.
            tokens = (res.predicted_replay if res.predicted_replay is not None
                      else res.predicted_empirical if inner == "empirical" else res.predicted_independence)
            trial.set_user_attr("tokens_per_step", tokens)
            return tokens / t
        kw = {}
        if evaluator.typical:
            kw = {
                "posterior_threshold": trial.suggest_float("posterior_threshold", *config.posterior_threshold_range, log=True),
                "posterior_alpha": trial.suggest_float("posterior_alpha", *config.posterior_alpha_range, log=True),
            }
        m = evaluator.measure(res.tree, **kw)
        trial.set_user_attr("tokens_per_step", m.accepted_length)
        trial.set_user_attr("quality", m.quality)
        speed = m.accepted_length / t
        return (speed, m.quality) if multi_objective else speed

    return objective


def optuna_search(
    inputs: AccuracyInputs,
    max_budget: int = 64,
    max_depth: int | None = None,
    top_k: TopK = None,
    profile: Any = None,
    n_trials: int | None = None,
    storage: Any = None,
    study_name: str | None = None,
    min_budget: int | None = None,
    context: int | None = None,
    inner: str | None = None,
    evaluator: AcceptanceEvaluator | None = None,
    multi_objective: bool = False,
    seed: int | None = None,
    name: str | None = None,
) -> SearchResult:
    """Hardware-aware search: maximise tokens/s = E[tokens per step] / t_verify(node budget).

    Runs `n_trials` more trials in the (possibly shared, persisted) study and returns its best
    tree; in multi-objective mode (needs an `evaluator`) `pareto` holds the speed/quality front
    and `tree` is its fastest member.
    """
    import optuna

    d = OptunaConfig()
    inner = inner or d.inner
    if inner not in ("greedy", "empirical"):
        raise WorkbenchError(f"inner tree builder must be greedy or empirical, got {inner!r}")
    if inner == "empirical" and inputs.stats is None:
        inner = "greedy"
    if multi_objective and evaluator is None:
        raise WorkbenchError("multi-objective search needs measured acceptance (an evaluator on calibration prompts)")
    min_budget = d.min_budget if min_budget is None else int(min_budget)
    n_trials = int(n_trials if n_trials is not None else (d.n_trials if evaluator is None else d.measured_trials))
    seed = d.seed if seed is None else seed
    if n_trials < 1:
        raise WorkbenchError(f"trials must be >= 1, got {n_trials}")
    if not 1 <= min_budget <= max_budget:
        raise WorkbenchError(f"need 1 <= min budget ({min_budget}) <= budget ({max_budget})")
    caps = depth_caps(inputs.marginals, max_depth, top_k)
    check_budget(max_budget, caps)
    latency, device = resolve_profile(profile)
    mode = "measured-typical" if evaluator is not None and evaluator.typical else (
        "measured" if evaluator is not None else "replay" if inputs.replay is not None else "predicted")
    cal = inputs.calibration_dir.name if inputs.calibration_dir is not None else Path(inputs.source).stem
    # The objective depends on the measured profile: a re-measured profile starts a new study.
    times = monotone_verify_times(latency, max_budget, context)
    profile_fp = hashlib.sha256(json.dumps([round(t, 9) for t in times]).encode()).hexdigest()[:8]
    # So does a re-run calibration (e.g. after retraining the heads): stale trials must not be reused.
    cal_fp = hashlib.sha256(np.ascontiguousarray(inputs.marginals.count, dtype=np.int64).tobytes()).hexdigest()[:8]
    study_name = study_name or (
        f"tree/{cal}-{cal_fp}/{device}-{profile_fp}/{mode}{'-multi' if multi_objective else ''}/{inner}"
        f"/b{min_budget}-{max_budget}/k{'x'.join(map(str, caps))}"
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_obj = open_storage(storage)
    directions = ["maximize", "maximize"] if multi_objective else ["maximize"]
    try:
        study = optuna.create_study(
            study_name=study_name, storage=storage_obj, load_if_exists=True, directions=directions,
            sampler=optuna.samplers.TPESampler(seed=seed),
        )
    except ValueError as e:  # e.g. an existing study of the same name with other directions
        raise WorkbenchError(f"cannot open study {study_name!r}: {e}") from None
    objective = make_objective(inputs, latency, caps, (min_budget, max_budget), inner, context,
                               evaluator, multi_objective, d, times)
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=n_trials, catch=())
    elapsed = time.perf_counter() - t0
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise WorkbenchError(f"study {study_name!r} has no completed trial (all {len(study.trials)} pruned); run more trials")
    if multi_objective:
        front = sorted(study.best_trials, key=lambda t: (-t.values[0], t.number))
        best = front[0]
        pareto = tuple(ParetoPoint(t.number, tuple(t.values), dict(t.params)) for t in front)
    else:
        best = study.best_trial
        pareto = (ParetoPoint(best.number, tuple(best.values), dict(best.params)),)
    attrs = best.user_attrs
    meta = {
        "method": "optuna",
        "accuracy": inputs.source,
        "study": study_name,
        "trial": best.number,
        "params": dict(best.params),
        "device": device,
        "context": context,
        "objective": mode,
        "predicted_independence": attrs.get("predicted_independence"),
        "predicted_empirical": attrs.get("predicted_empirical"),
        "predicted_replay": attrs.get("predicted_replay"),
        "tokens_per_step": attrs.get("tokens_per_step"),
        "verify_s": attrs.get("verify_s"),
        "predicted_tokens_per_s": best.values[0],
        "quality": attrs.get("quality"),
        "trials": len(study.trials),
    }
    tree = Tree.from_paths(attrs["paths"], name=name or f"optuna_{max_budget}", meta=meta)
    return SearchResult(
        tree=tree, method="optuna",
        predicted_independence=expected_tokens(tree, inputs.marginals),
        predicted_empirical=expected_tokens(tree, inputs.stats) if inputs.stats is not None else None,
        predicted_replay=expected_tokens(tree, inputs.replay) if inputs.replay is not None else None,
        search_s=elapsed, accuracy_source=inputs.source, predicted_tokens_per_s=float(best.values[0]),
        verify_s=attrs.get("verify_s"), study_name=study_name,
        storage=(f"sqlite:///{DEFAULT_STORAGE}" if storage is None
                 else str(storage) if isinstance(storage, str | Path) else type(storage).__name__),
        pareto=pareto, extra={"params": dict(best.params)},
    )


# ---- CLI ----------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one `WorkbenchError` line (exit 2 via run_cli)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise WorkbenchError(message)


def parse_top_k(text: str | None) -> TopK:
    if text is None:
        return None
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise WorkbenchError(f"--top-k must be an integer or comma-separated integers per depth, got {text!r}") from None
    if not vals:
        raise WorkbenchError(f"--top-k is empty: {text!r}")
    return vals[0] if len(vals) == 1 and "," not in text else vals


def summary(result: SearchResult) -> str:
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
    if result.predicted_tokens_per_s is not None:
        lines.append(
            f"  predicted tokens/s: {result.predicted_tokens_per_s:.1f} (verify {result.verify_s * 1e3:.2f} ms"
            f" per step; study {result.study_name})"
        )
    if len(result.pareto) > 1:
        lines.append(f"  Pareto front: {len(result.pareto)} trials")
        for pt in result.pareto:
            vals = ", ".join(f"{v:.4g}" for v in pt.values)
            lines.append(f"    trial {pt.trial}: ({vals}) {json.dumps(pt.params, sort_keys=True)}")
    lines.append(f"  search time: {result.search_s:.3f} s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = _Parser(prog="python -m trees.search", description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=int, default=64, help="node budget, root included (optuna: the largest tried)")
    p.add_argument("--method", default="greedy", help=f"one of {', '.join(METHODS)}")
    p.add_argument("--accuracy", default=None, help="accuracy CSV (head,rank0,accuracy,count or head,topk,accuracy,count)")
    p.add_argument("--paths", default=None, help="path statistics CSV (default: paths.csv beside the accuracy file)")
    p.add_argument("--max-depth", type=int, default=None)
    p.add_argument("--top-k", default=None, help="rank cap: one integer, or one per depth (10,5,3)")
    p.add_argument("--format", default="text", help="stdout: text (summary), json (tree JSON) or medusa_choices")
    p.add_argument("--name", default=None, help="tree name and file stem (default <method>_<budget>)")
    p.add_argument("--out", default=None, help="tree JSON path (default results/trees/<name>.json)")
    p.add_argument("--set-default", action="store_true",
                   help=f"also write the tree to {_display(DEFAULT_TREE_FILE)} (what generate and bench load)")
    p.add_argument("--plot", default=None, help="draw the tree (PNG/PDF/SVG)")
    g = p.add_argument_group("optuna")
    g.add_argument("--trials", type=int, default=None, help="trials to run in this process")
    g.add_argument("--min-budget", type=int, default=None)
    g.add_argument("--storage", default=None, help=f"database URL or journal file (default {_display(DEFAULT_STORAGE)})")
    g.add_argument("--study", default=None, help="study name (default derived from calibration, device, space)")
    g.add_argument("--latency", default=None, help="latency CSV (default results/latency/<this device>.csv)")
    g.add_argument("--context", type=int, default=None, help="context length at which verify time is read")
    g.add_argument("--inner", default=None, help="tree builder inside each trial: empirical (default) or greedy")
    args = p.parse_args(argv)

    if args.format not in ("text", "json", "medusa_choices"):
        raise WorkbenchError(f"unknown --format {args.format!r} (use text, json or medusa_choices)")
    kw: dict[str, Any] = {}
    if args.paths:
        kw["paths"] = args.paths
    if args.method == "optuna":
        for opt, dest in (("trials", "n_trials"), ("min_budget", "min_budget"), ("storage", "storage"),
                          ("study", "study_name"), ("latency", "profile"), ("context", "context"),
                          ("inner", "inner")):
            if getattr(args, opt) is not None:
                kw[dest] = getattr(args, opt)
    else:
        given = [o for o in ("trials", "min_budget", "storage", "study", "latency", "context", "inner")
                 if getattr(args, o) is not None]
        if given:
            raise WorkbenchError(f"--{given[0].replace('_', '-')} applies to --method optuna only")
    name = args.name or f"{args.method}_{args.budget}"
    kw["name"] = name
    result = search(args.method, args.budget, args.accuracy, args.max_depth, parse_top_k(args.top_k), **kw)
    tree = result.tree
    meta = dict(tree.meta)
    meta.update({"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "command": "python -m trees.search " + " ".join(sys.argv[1:] if argv is None else argv)})
    tree = Tree.from_paths(tree.paths, name=name, meta=meta)
    out = Path(args.out) if args.out else TREES_DIR / f"{name}.json"
    try:
        tree.save(out)
        if args.set_default:
            tree.save(DEFAULT_TREE_FILE)
    except OSError as e:
        raise WorkbenchError(f"cannot write tree: {e}") from None
    if args.plot:
        from trees.plot import plot_tree

        inputs = resolve_accuracy(args.accuracy, args.paths)
        model = inputs.stats if inputs.stats is not None else inputs.marginals
        plot_tree(tree, model, args.plot)
    if args.format == "medusa_choices":
        print(json.dumps(tree.medusa_choices()))
    elif args.format == "json":
        print(tree.to_json())
    else:
        print(summary(result))
        print(f"  wrote {_display(out)}" + (f" and {_display(DEFAULT_TREE_FILE)}" if args.set_default else ""))
        if args.plot:
            print(f"  drew {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
