"""Hardware-aware tree search with Optuna: the tree that is fastest on one machine, or the trade-off front.

Each trial picks a node budget (up to the largest allowed), a maximum depth and a top-k cap per
depth, builds the empirical-optimal (or greedy) tree in that space (`trees.best_first`) and scores
it with this machine's measured verify time ``t_verify(node budget)`` (`trees.cost`, read from the
latency profile `bench.latency` wrote, made non-decreasing in the node budget):

- one objective (default): maximise predicted tokens per second ``E[tokens per step] / t_verify``;
- ``pareto=True``: two objectives, maximise ``E[tokens per step]`` and minimise ``t_verify``; the
  result holds the Pareto front (accepted length against verify cost) and, as its tree, the front
  member with the most tokens per second (the single-objective optimum always lies on the front).

At ``batch_size`` B (batched decoding, `medusa.batch`) every step verifies B rows of the same tree
shape at once, so ``t_verify`` is the profile's T(B, node budget) and the predicted throughput is
``B x E[tokens per step] / T(B, node budget)`` (`trees.cost.batch_tokens_per_s`); a tree that is
cheap to verify alone may not be in a full batch, so the best node budget depends on B. Each batch
size is its own study (B > 1 adds ``/B<B>`` to the default study name; batch 1 names are unchanged).

E is the replay model's when the calibration's ranks table is present (it predicts tokens per
*engine step*; see `trees.acceptance_model`), else the empirical model's (or the independence
model's with the greedy builder). No model is run: the search reads tables only.

Studies persist in Optuna storage: SQLite ``results/_scratch/optuna.db`` by default (git-ignored
scratch: a study is a working file, not a result; the trees it finds are), or any database URL, or
a journal file (``*.log``), so many workers on many machines can share one study. The default
study name encodes the calibration, the latency profile, the objective and the space, so a
re-measured profile or a re-run calibration never resumes stale trials; a study that already holds
trials is continued, and `notify` (the CLI: one stderr line) is told so. Optuna's log level is
left alone here (the CLI quiets it).

Usage::

    from trees.optuna_search import optuna_search
    result = optuna_search(resolve_accuracy(), max_budget=64, profile="results/latency/cpu-amd-epyc-1t.csv")
    front = optuna_search(inputs, max_budget=64, pareto=True).pareto
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from common.errors import WorkbenchError
from common.io import display
from common.paths import OPTUNA_DB
from trees.acceptance_model import expected_tokens
from trees.best_first import (
    BEST_FIRST,
    ParetoPoint,
    SearchResult,
    TopK,
    check_budget,
    depth_caps,
    search_tree,
    space_size,
)
from trees.cost import batch_tokens_per_s, default_profile_path, load_profile
from trees.inputs import AccuracyInputs
from trees.tree import Tree

PARETO_COLUMNS = ["trial", "batch", "node_budget", "depth", "tokens_per_step", "verify_s", "tokens_per_s", "chosen",
                  "medusa_choices"]


@dataclass(frozen=True)
class OptunaConfig:
    """Defaults of the hardware-aware search (each defined here only)."""

    n_trials: int = 200
    min_budget: int = 2
    inner: str = "empirical"
    seed: int = 0
    batch_size: int = 1  # rows verified per step: the verify time read is T(batch_size, node budget)


class LatencyModel(Protocol):
    """What the search reads: `trees.cost.LatencyProfile`, or any object with this method (a
    batch-1-only model may omit `batch`: it is passed only for batch sizes above 1)."""

    def verify_time(self, n_query: int, context: int = ..., batch: int = ...) -> float: ...


@dataclass(frozen=True)
class StudyPlan:
    """The settled settings of one search: what the trials explore and how they are scored."""

    caps: tuple[int, ...]
    budgets: tuple[int, int]
    inner: str
    n_trials: int
    seed: int
    pareto: bool
    mode: str  # replay or predicted: which model gives E[tokens per step]
    device: str
    context: int | None
    batch: int  # rows per verify step; verify_times are T(batch, n)
    verify_times: tuple[float, ...]  # seconds for 1..max budget query tokens, non-decreasing
    study_name: str


# ---- inputs: storage and latency ----------------------------------------------------------------
def open_storage(storage: Any = None) -> Any:
    """Optuna storage: None = SQLite results/_scratch/optuna.db; a URL; a `*.log` journal file; a `*.db` file."""
    import optuna

    if storage is None:
        OPTUNA_DB.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{OPTUNA_DB}"
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


def storage_label(storage: Any) -> str:
    """How a result names its storage: the URL, the file, or the storage object's type."""
    if storage is None:
        return f"sqlite:///{OPTUNA_DB}"
    return str(storage) if isinstance(storage, str | Path) else type(storage).__name__


def batch_name(name: str, batch: int) -> str:
    """The name of a search (tree, study, file stem) at `batch` rows per step: `name` at batch 1
    (names from before batched decoding stay valid), else `<name>_b<batch>`."""
    return name if batch == 1 else f"{name}_b{batch}"


def check_batch_size(batch: Any) -> int:
    """`batch` if it is a positive integer (rows verified per step), else one `WorkbenchError` line."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise WorkbenchError(f"batch size must be a positive integer, got {batch!r}")
    return batch


def resolve_profile(profile: Any) -> tuple[LatencyModel, str]:
    """(latency model, device label) from a profile object, a CSV path or None (this machine's)."""
    if profile is not None and hasattr(profile, "verify_time"):
        return profile, str(getattr(profile, "device", "") or "profile")
    if profile is None:
        return load_profile(None), default_profile_path().stem
    return load_profile(profile), Path(profile).stem


def monotone_verify_times(profile: LatencyModel, max_budget: int, context: int | None = None,
                          batch: int = 1) -> list[float]:
    """Verify seconds of `batch` rows of 1..max_budget query tokens, T(batch, n), made non-decreasing
    (running maximum).

    Verifying more tokens never costs less; a dip in a measured profile is noise that a search
    would otherwise exploit.
    """
    args = () if context is None else (context,)
    kw = {} if batch == 1 else {"batch": batch}  # batch-1 latency models need not take the keyword
    out: list[float] = []
    for n in range(1, max_budget + 1):
        t = float(profile.verify_time(n, *args, **kw))
        out.append(max(t, out[-1]) if out else t)
    return out


# ---- phase 1: settle the settings ---------------------------------------------------------------
def default_study_name(inputs: AccuracyInputs, plan_fields: dict[str, Any]) -> str:
    """A name that changes whenever stale trials must not be reused.

    The objective depends on the measured profile (a re-measured one starts a new study) and on
    the calibration (e.g. after retraining the heads), so both are fingerprinted into the name.
    """
    f = plan_fields
    cal = inputs.calibration_dir.name if inputs.calibration_dir is not None else Path(inputs.source).stem
    profile_fp = hashlib.sha256(json.dumps([round(t, 9) for t in f["verify_times"]]).encode()).hexdigest()[:8]
    cal_fp = hashlib.sha256(np.ascontiguousarray(inputs.marginals.count, dtype=np.int64).tobytes()).hexdigest()[:8]
    objective = f["mode"] + ("-pareto" if f["pareto"] else "")
    batch = "" if f["batch"] == 1 else f"/B{f['batch']}"  # batch-1 studies keep their names (and trials)
    return (f"tree/{cal}-{cal_fp}/{f['device']}-{profile_fp}/{objective}/{f['inner']}"
            f"/b{f['budgets'][0]}-{f['budgets'][1]}/k{'x'.join(map(str, f['caps']))}{batch}")


def plan_study(
    inputs: AccuracyInputs,
    max_budget: int,
    max_depth: int | None = None,
    top_k: TopK = None,
    profile: Any = None,
    n_trials: int | None = None,
    study_name: str | None = None,
    min_budget: int | None = None,
    context: int | None = None,
    inner: str | None = None,
    pareto: bool = False,
    seed: int | None = None,
    batch_size: int | None = None,
) -> StudyPlan:
    """Check the settings against the inputs and fill in the defaults; reads the latency profile."""
    d = OptunaConfig()
    batch = check_batch_size(d.batch_size if batch_size is None else batch_size)
    inner = inner or d.inner
    if inner not in BEST_FIRST:
        raise WorkbenchError(f"inner tree builder must be greedy or empirical, got {inner!r}")
    if inner == "empirical" and inputs.stats is None:
        inner = "greedy"
    min_budget = d.min_budget if min_budget is None else int(min_budget)
    n_trials = int(d.n_trials if n_trials is None else n_trials)
    if n_trials < 1:
        raise WorkbenchError(f"trials must be >= 1, got {n_trials}")
    if not 1 <= min_budget <= max_budget:
        raise WorkbenchError(f"need 1 <= min budget ({min_budget}) <= budget ({max_budget})")
    caps = depth_caps(inputs.marginals, max_depth, top_k)
    check_budget(max_budget, caps)
    latency, device = resolve_profile(profile)
    fields = {
        "caps": tuple(caps), "budgets": (min_budget, max_budget), "inner": inner, "n_trials": n_trials,
        "seed": d.seed if seed is None else seed, "pareto": bool(pareto),
        "mode": "replay" if inputs.replay is not None else "predicted", "device": device, "context": context,
        "batch": batch, "verify_times": tuple(monotone_verify_times(latency, max_budget, context, batch)),
    }
    return StudyPlan(**fields, study_name=study_name or default_study_name(inputs, fields))


# ---- phase 2: the objective ---------------------------------------------------------------------
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


def tokens_per_step(res: SearchResult, inner: str) -> float:
    """The replay model's prediction when calibration ranks exist, else the inner builder's model's."""
    if res.predicted_replay is not None:
        return res.predicted_replay
    return res.predicted_empirical if inner == "empirical" else res.predicted_independence


def make_objective(inputs: AccuracyInputs, plan: StudyPlan) -> Callable[[Any], float | tuple[float, float]]:
    """Tokens per second of the whole batch (B x tokens per step / T(B, N)), or (tokens per step,
    verify seconds) for a Pareto study."""

    def objective(trial: Any) -> float | tuple[float, float]:
        res = trial_tree(trial, inputs, plan.caps, plan.budgets, plan.inner)
        t = plan.verify_times[res.tree.node_budget - 1]
        tokens = tokens_per_step(res, plan.inner)
        tokens_per_s = batch_tokens_per_s(tokens, t, plan.batch)
        for key, value in (("paths", res.tree.medusa_choices()), ("verify_s", t), ("tokens_per_step", tokens),
                           ("tokens_per_s", tokens_per_s), ("batch", plan.batch),
                           ("predicted_independence", res.predicted_independence),
                           ("predicted_empirical", res.predicted_empirical),
                           ("predicted_replay", res.predicted_replay)):
            trial.set_user_attr(key, value)
        return (tokens, t) if plan.pareto else tokens_per_s

    return objective


# ---- phase 3: open and run the study ------------------------------------------------------------
def open_study(plan: StudyPlan, storage: Any = None, notify: Callable[[str], None] | None = None) -> Any:
    """Create the study, or load the one of the same name to continue it (telling `notify` so)."""
    import optuna

    directions = ["maximize", "minimize"] if plan.pareto else ["maximize"]
    try:
        study = optuna.create_study(
            study_name=plan.study_name, storage=open_storage(storage), load_if_exists=True, directions=directions,
            sampler=optuna.samplers.TPESampler(seed=plan.seed),
        )
    except ValueError as e:  # e.g. an existing study of the same name with other directions
        raise WorkbenchError(f"cannot open study {plan.study_name!r}: {e}") from None
    if notify is not None and study.trials:
        notify(resume_message(plan.study_name, len(study.trials), storage))
    return study


def resume_message(study_name: str, trials: int, storage: Any = None) -> str:
    """The line saying a search continues an existing study, and how to start a fresh one instead."""
    where = display(OPTUNA_DB) if storage is None else storage_label(storage)
    return (f"resuming Optuna study {study_name!r} in {where}: {trials} trials so far "
            f"(--storage FILE or --study NAME for a fresh study)")


def run_trials(study: Any, objective: Callable[[Any], Any], n_trials: int) -> float:
    """Run `n_trials` more trials; returns the seconds they took."""
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=n_trials, catch=())
    return time.perf_counter() - t0


# ---- phase 4: pick the result -------------------------------------------------------------------
def point(trial: Any) -> ParetoPoint:
    return ParetoPoint(trial.number, tuple(trial.values), dict(trial.params),
                       Tree.from_paths(trial.user_attrs["paths"]), dict(trial.user_attrs))


def select_trials(study: Any, plan: StudyPlan) -> tuple[Any, tuple[ParetoPoint, ...]]:
    """(the chosen trial, the front): the best trial alone, or the Pareto front without repeated
    trees, cheapest verify first, and its member with the most tokens per second."""
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise WorkbenchError(
            f"study {plan.study_name!r} has no completed trial (all {len(study.trials)} pruned); run more trials")
    if not plan.pareto:
        best = study.best_trial
        return best, (point(best),)
    front, seen = [], set()
    for t in sorted(study.best_trials, key=lambda t: (t.values[1], -t.values[0], t.number)):
        key = tuple(map(tuple, t.user_attrs["paths"]))
        if key not in seen:
            seen.add(key)
            front.append(t)
    best = max(front, key=lambda t: (t.values[0] / t.values[1], -t.number))
    return best, tuple(point(t) for t in front)


def search_result(inputs: AccuracyInputs, plan: StudyPlan, study: Any, best: Any, front: tuple[ParetoPoint, ...],
                  elapsed: float, storage: Any, name: str | None) -> SearchResult:
    """The chosen trial's tree, with its meta (study, objective, predictions) and the front."""
    attrs = best.user_attrs
    # Trials of studies begun before `tokens_per_s` was recorded: the single objective is that value.
    tokens_per_s = float(attrs["tokens_per_s"] if "tokens_per_s" in attrs else best.values[0])
    meta = {
        "method": "optuna",
        "accuracy": inputs.source,
        "study": plan.study_name,
        "trial": best.number,
        "params": dict(best.params),
        "device": plan.device,
        "context": plan.context,
        "batch": plan.batch,
        "objective": plan.mode + ("-pareto" if plan.pareto else ""),
        "predicted_independence": attrs.get("predicted_independence"),
        "predicted_empirical": attrs.get("predicted_empirical"),
        "predicted_replay": attrs.get("predicted_replay"),
        "tokens_per_step": attrs.get("tokens_per_step"),
        "verify_s": attrs.get("verify_s"),
        "predicted_tokens_per_s": tokens_per_s,
        "trials": len(study.trials),
    }
    if plan.pareto:
        meta["pareto_front"] = len(front)
    tree = Tree.from_paths(attrs["paths"], name=name or batch_name(f"optuna_{plan.budgets[1]}", plan.batch), meta=meta)
    return SearchResult(
        tree=tree, method="optuna",
        predicted_independence=expected_tokens(tree, inputs.marginals),
        predicted_empirical=expected_tokens(tree, inputs.stats) if inputs.stats is not None else None,
        predicted_replay=expected_tokens(tree, inputs.replay) if inputs.replay is not None else None,
        search_s=elapsed, accuracy_source=inputs.source, predicted_tokens_per_s=tokens_per_s,
        verify_s=attrs.get("verify_s"), study_name=plan.study_name, storage=storage_label(storage),
        pareto=front, extra={"params": dict(best.params), "batch": plan.batch},
    )


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
    pareto: bool = False,
    seed: int | None = None,
    name: str | None = None,
    notify: Callable[[str], None] | None = None,
    batch_size: int | None = None,
) -> SearchResult:
    """Hardware-aware search: maximise tokens/s = B x E[tokens per step] / T(B, node budget), B =
    `batch_size` (default 1: E[tokens per step] / t_verify(node budget)).

    Runs `n_trials` more trials in the (possibly shared, persisted) study and returns its best
    tree; with `pareto` the study has two objectives (tokens per step up, verify seconds down),
    `pareto` of the result holds the front and `tree` is its member with the most tokens/s.
    `notify(line)`, when given, hears that an existing study with trials is being continued.
    """
    plan = plan_study(inputs, max_budget, max_depth, top_k, profile, n_trials, study_name, min_budget, context,
                      inner, pareto, seed, batch_size)
    study = open_study(plan, storage, notify)
    elapsed = run_trials(study, make_objective(inputs, plan), plan.n_trials)
    best, front = select_trials(study, plan)
    return search_result(inputs, plan, study, best, front, elapsed, storage, name)


def pareto_table(result: SearchResult) -> pd.DataFrame:
    """The front of a Pareto search as a table (columns PARETO_COLUMNS), cheapest verify first."""
    chosen = result.tree.meta.get("trial")
    rows = []
    for p in result.pareto:
        a = p.attrs
        rows.append({
            "trial": p.trial, "batch": a.get("batch", 1), "node_budget": p.tree.node_budget if p.tree else None,
            "depth": p.tree.depth if p.tree else None, "tokens_per_step": a.get("tokens_per_step"),
            "verify_s": a.get("verify_s"), "tokens_per_s": a.get("tokens_per_s"), "chosen": p.trial == chosen,
            "medusa_choices": json.dumps(p.tree.medusa_choices()) if p.tree else "",
        })
    return pd.DataFrame(rows, columns=PARETO_COLUMNS)
