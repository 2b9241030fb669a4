"""Throughput against batch size: what batching does to Medusa's speedup.

    python -m bench.throughput --methods hf-greedy,ar,medusa --batch-size 1,2,4,8,16 \\
        --prompts mtbench --limit 2 --max-new-tokens 64 [--tree FILE | --preset NAME | --budget N | \\
        --batch-trees results/trees/cpu_b{batch}.json] \\
        [--threads N] [--heads DIR] [--out FOLDER]
    python -m bench.throughput --summary results/bench/throughput-cpu

For every batch size B and method (order rotated per batch size), ONE timed call decodes all the
prompts' first turns B at a time (`Method.generate_batch`): `ar` and `medusa` by continuous
batching in our engine (`medusa.batch`: a finished row leaves and the next request joins between
steps; `ar-compiled`/`medusa-compiled` with the verify compiled on fixed rows, warmed up per batch
size), `hf-greedy` by transformers' own left-padded static batches. With ``--batch-trees PATTERN`` the
tree methods verify a different tree per batch size (the file ``PATTERN.format(batch=B)``, e.g. what
`trees.search --batch-size` picks for each size; at batch 1 a missing ``..._b1.json`` falls back to
the name without ``_b1``, as the search writes it). Each method is warmed up once before the first
timed call. Tokens are counted by the harness's one rule
(`bench.records.count_new_tokens`), for every method alike.

Writes ``--out`` (default ``results/_scratch/throughput/<prompts>``): `requests.csv`, one row per
request and (method, B): its prompt, new tokens, latency (call start to its last token), time queued
for a row, steps and accepted length, the heads/verify/bookkeeping seconds of the steps it was in, a hash of its output ids, and the call's wall time, load
average and provenance; `run.json`, the run's identity (a resumed run with other settings is
refused). Calls already in the file are skipped, so an interrupted run resumes. `summarize`
(`--summary FOLDER`) gives per (method, B): throughput (tokens/s of the whole call), mean and p90
latency, mean accepted length, ms per step in each phase, speedup over `ar` (`ar-compiled` for the
compiled methods) and over `hf-greedy` at the same B, and whether
every output equals the method's own B=1 output and hf-greedy's B=1 output (`identical_b1`,
`identical_ref`).

Bad input (batch size 0, a method that does not batch) prints one ``error:`` line, exit 2; a
request the method cannot serve (e.g. a prompt too long for the context) is reported on one line,
the other requests' rows are written, and the exit status is 2.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import records as R
from bench.config import BenchConfig, config_from_args, parser
from bench.identity import check_identity
from bench.methods import Method, MethodOutput
from bench.methods.base import BATCHING
from bench.prompts import load_bench_prompts, source_name
from bench.run import build_methods, load_models, run_identity, run_threads
from common.cli import apply_threads, comma_list, load_average, run_cli, warn_if_busy
from common.errors import WorkbenchError
from common.io import display, read_csv, write_csv
from common.paths import SCRATCH_THROUGHPUT
from common.provenance import Provenance
from medusa.backbone import Backbone
from medusa.batch import RequestError
from medusa.decode import Proposer
from medusa.resolve import resolve_tree
from trees.tree import Tree

REQUESTS = "requests.csv"
PHASES = ("heads", "verify", "bookkeeping")  # `medusa.decode.StepStats` times of a step
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class ThroughputConfig:
    """A throughput run: the benchmark settings (`BenchConfig`: methods, prompts, tree, ...) and batch sizes."""

    run: BenchConfig
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    # A tree file per batch size for the tree methods, "{batch}" standing for the size (e.g. the
    # hardware-aware search's pick per batch size); None: the run's one tree (--tree/--preset/--budget).
    batch_trees: str | None = None

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise WorkbenchError(f"--batch-size must be positive integers, got {','.join(map(str, self.batch_sizes))}")
        if self.run.turns != 1 or self.run.repeats != 1 or self.run.shard != (0, 1):
            raise WorkbenchError("throughput runs time first turns once, unsharded: drop --turns, --repeats and --shard")
        if self.batch_trees is not None:
            if "{batch}" not in self.batch_trees:
                raise WorkbenchError(f"--batch-trees must contain {{batch}} (e.g. results/trees/cpu_b{{batch}}.json), "
                                     f"got {self.batch_trees!r}")
            if any(x is not None for x in (self.run.tree_file, self.run.preset, self.run.budget)):
                raise WorkbenchError("give either --batch-trees or one of --tree, --preset, --budget")
        stray = [m for m in self.run.methods if m not in BATCHING]
        if stray:
            raise WorkbenchError(f"method {stray[0]} does not batch (batching methods: {', '.join(BATCHING)})")

    @property
    def out_dir(self) -> Path:
        return Path(self.run.out) if self.run.out else SCRATCH_THROUGHPUT / source_name(self.run.prompts)


@dataclass
class ThroughputSummary:
    out_dir: Path
    calls: int = 0
    skipped: int = 0
    errors: list[str] | None = None


def batch_tree_file(pattern: str, batch: int) -> str:
    """The tree file of `batch`: the pattern with {batch} filled in; at batch 1 also the name without
    ``_b{batch}`` (`trees.search --batch-size` keeps batch-1 names as they are)."""
    path = pattern.format(batch=batch)
    plain = pattern.replace("_b{batch}", "")
    return plain if batch == 1 and not Path(path).is_file() and Path(plain).is_file() else path


def output_hash(ids: Sequence[int]) -> str:
    return hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:16]


def read_requests(out_dir: str | Path) -> pd.DataFrame:
    """The run's request rows (empty when the run has none yet)."""
    path = Path(out_dir) / REQUESTS
    if not path.is_file():
        return pd.DataFrame()
    return read_csv(path, "throughput requests", required=("method", "batch_size", "new_tokens", "call_wall_s"),
                    dtype={"output_sha": str})


def _rows(method: Method, batch_size: int, outputs: list[MethodOutput | RequestError], prompt_ids: list[list[int]],
          prompts: list[Any], wall_s: float, load: tuple[float, float], backbone: Backbone, max_new_tokens: int,
          provenance: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    desc = {"heads": "", "tree": "", "node_budget": float("nan"), **method.describe()}
    rows, errors = [], []
    for prompt, ids, out in zip(prompts, prompt_ids, outputs):
        if isinstance(out, RequestError):
            errors.append(f"{method.name} batch {batch_size}: {prompt.id}: {out.message}")
            continue
        new = R.count_new_tokens(out.new_ids, backbone.eos_token_ids, max_new_tokens)
        steps = out.steps or []
        rows.append({
            "method": method.name, "batch_size": batch_size, "question_id": prompt.id, "category": prompt.category,
            "prompt_tokens": len(ids), "new_tokens": len(new), "latency_s": out.latency_s, "queued_s": out.queued_s,
            "steps": len(steps) if out.steps is not None else float("nan"),
            "accepted_tokens": sum(s.accepted_length for s in steps) if out.steps is not None else float("nan"),
            # the batch steps this request took part in (shared with the other rows of each step)
            **{f"{phase}_s": sum(getattr(s, f"{phase}_s") for s in steps) if out.steps is not None else float("nan")
               for phase in PHASES},
            "output_sha": output_hash(new), "call_wall_s": wall_s, "load_start": load[0], "load_end": load[1],
            "backbone": backbone.name, "heads": desc["heads"], "tree": desc["tree"], "node_budget": float(desc["node_budget"]),
            "max_new_tokens": max_new_tokens, **provenance,
        })
    return rows, errors


def run_throughput(config: ThroughputConfig, backbone: Backbone | None = None, heads: Proposer | None = None,
                   heads_name: str = "injected", tree: Tree | None = None) -> ThroughputSummary:
    """Run (or resume) the timed calls; models may be injected (tests)."""
    run = config.run
    prompts = load_bench_prompts(run.prompts, run.categories or None, run.limit, turns=1)
    threads = run_threads(run)
    trees = {b: resolve_tree(batch_tree_file(config.batch_trees, b)) for b in config.batch_sizes} if config.batch_trees else {}
    models = load_models(run, backbone, heads, heads_name, tree or next(iter(trees.values()), None))
    if trees:
        methods = {b: build_methods(run, replace(models, tree=trees[b])) for b in config.batch_sizes}
    else:  # one tree: the same methods serve every batch size
        methods = dict.fromkeys(config.batch_sizes, build_methods(run, models))
    out_dir = config.out_dir
    identity = {**run_identity(run, models, threads), "harness": "throughput"}
    if trees:
        identity["tree"] = config.batch_trees
    old, identity = check_identity(out_dir, identity)
    provenance = Provenance.collect(str(models.backbone.device), dtype=identity["dtype"], threads=threads).as_dict()
    sessions = (old or {}).get("sessions", []) + [{**provenance, "batch_sizes": list(config.batch_sizes),
                                                  "config": {k: v for k, v in asdict(run).items() if k != "progress"}}]
    R.write_run_json(out_dir, {"identity": identity, "sessions": sessions})

    bb = models.backbone
    prompt_ids = [bb.chat_ids([{"role": "user", "content": p.turns[0]}]) for p in prompts]
    seeds = [run.seed + i for i in range(len(prompts))]
    done = read_requests(out_dir)
    have = set(zip(done["method"], done["batch_size"])) if len(done) else set()
    summary = ThroughputSummary(out_dir, errors=[])
    calls = [(b, m) for i, b in enumerate(config.batch_sizes)
             for m in run.methods[i % len(run.methods):] + run.methods[: i % len(run.methods)]]
    todo = [(b, m) for b, m in calls if (m, b) not in have]
    summary.skipped = len(calls) - len(todo)
    if todo and run.warmup_tokens > 0:
        for name in dict.fromkeys(m for _, m in todo):
            warm = max(config.batch_sizes)
            methods[warm][name].generate_batch(prompt_ids[:warm], run.warmup_tokens, seeds[:warm], warm)
    longest = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    for batch_size, name in todo:
        method = methods[batch_size][name]
        if getattr(method, "compile", False) and run.warmup_tokens > 0:
            # compiled: one graph per batch size (and cache bucket), compiled here, untimed, on the
            # longest prompts so the timed call's bucket is the same unless its answers cross one
            warm = [prompt_ids[i] for i in longest[:batch_size]]
            method.generate_batch(warm, run.warmup_tokens, [seeds[i] for i in longest[:batch_size]], batch_size)
        load_start = load_average()
        t0 = time.perf_counter()
        outputs = method.generate_batch(prompt_ids, run.max_new_tokens, seeds, batch_size)
        wall_s = time.perf_counter() - t0
        load = (float("nan") if load_start is None else load_start, load_average() or float("nan"))
        rows, errors = _rows(method, batch_size, outputs, prompt_ids, prompts, wall_s, load, bb, run.max_new_tokens,
                             provenance)
        summary.errors.extend(errors)
        done = pd.concat([done, pd.DataFrame(rows)], ignore_index=True) if rows else done
        if rows:
            write_csv(done, out_dir / REQUESTS)
        summary.calls += 1
        if run.progress:
            tokens = sum(r["new_tokens"] for r in rows)
            print(f"  {name:10s} batch {batch_size:3d}  {tokens / wall_s:8.1f} tokens/s  ({wall_s:.1f} s)", file=sys.stderr)
    return summary


def summarize(requests: pd.DataFrame) -> pd.DataFrame:
    """Per (method, batch size): throughput, latency, accepted length, speedups, output identity."""
    if requests.empty:
        raise WorkbenchError("no throughput rows to summarise")
    df = requests.copy()
    b1 = df[df["batch_size"] == 1].set_index(["method", "question_id"])["output_sha"]
    ref = df[(df["batch_size"] == 1) & (df["method"] == "hf-greedy")].set_index("question_id")["output_sha"]
    keys = list(zip(df["method"], df["question_id"]))
    df["same_b1"] = [b1.get(k) == sha if k in b1.index else np.nan for k, sha in zip(keys, df["output_sha"])]
    df["same_ref"] = [ref.get(q) == sha if q in ref.index else np.nan for q, sha in zip(df["question_id"], df["output_sha"])]
    out = df.groupby(["method", "batch_size"], sort=True).agg(
        requests=("question_id", "size"), new_tokens=("new_tokens", "sum"), wall_s=("call_wall_s", "first"),
        mean_latency_s=("latency_s", "mean"), p90_latency_s=("latency_s", lambda s: float(np.percentile(s, 90))),
        steps=("steps", lambda s: s.sum(min_count=1)), accepted_tokens=("accepted_tokens", lambda s: s.sum(min_count=1)),
        identical_b1=("same_b1", lambda s: bool(s.dropna().all()) if s.notna().any() else np.nan),
        identical_ref=("same_ref", lambda s: bool(s.dropna().all()) if s.notna().any() else np.nan),
        load=("load_start", "max"), node_budget=("node_budget", "first"), tree=("tree", "first"),
    ).reset_index()
    out["tokens_per_s"] = out["new_tokens"] / out["wall_s"]
    for phase in PHASES:  # mean ms per batch step; a step's time appears once in each of its rows
        if f"{phase}_s" in df.columns:
            per_row = df.groupby(["method", "batch_size"], sort=True).apply(
                lambda g, c=f"{phase}_s": g[c].sum(min_count=1) / g["steps"].sum(min_count=1), include_groups=False)
            out[f"{phase}_ms"] = per_row.to_numpy() * 1e3
    out["mean_accepted_length"] = out["accepted_tokens"] / out["steps"]
    for base in ("ar", "hf-greedy"):
        # `ar` means plain decoding in the same engine mode: ar-compiled for the compiled methods
        col = []
        for method, b, t in zip(out["method"], out["batch_size"], out["tokens_per_s"]):
            name = f"{base}-compiled" if base == "ar" and method.endswith("-compiled") else base
            match = out[(out["method"] == name) & (out["batch_size"] == b)]["tokens_per_s"]
            col.append(t / float(match.iloc[0]) if len(match) else np.nan)
        out[f"speedup_vs_{base}"] = col
    return out


def _print_summary(table: pd.DataFrame) -> None:
    cols = ["method", "batch_size", "requests", "tokens_per_s", "mean_latency_s", "mean_accepted_length",
            "speedup_vs_ar", "speedup_vs_hf-greedy", "identical_b1", "identical_ref", "load"]
    cols += [c for c in ("node_budget", "heads_ms", "verify_ms", "bookkeeping_ms") if c in table.columns]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.2f}".format):
        print(table[cols].to_string(index=False))


def main(argv: Sequence[str] | None = None) -> int:
    load = load_average()  # the neighbours' load, read before ours adds to it
    p = parser()
    p.prog = "python -m bench.throughput"
    p.description = __doc__.split("\n")[0]
    p.set_defaults(methods="hf-greedy,ar,medusa")
    p.add_argument("--batch-size", default=",".join(map(str, DEFAULT_BATCH_SIZES)),
                   help="batch sizes, comma-separated (one timed call per method and size)")
    p.add_argument("--batch-trees", default=None, metavar="PATTERN",
                   help="a tree file per batch size, {batch} standing for the size (e.g. the search's pick per size)")
    p.add_argument("--summary", default=None, metavar="FOLDER", help="print the summary of a run folder and exit")
    args = p.parse_args(argv)
    if args.summary:
        _print_summary(summarize(read_requests(args.summary)))
        return 0
    sizes = tuple(comma_list(args.batch_size, int, "--batch-size"))
    config = ThroughputConfig(config_from_args(args), sizes, args.batch_trees)
    apply_threads(config.run.threads)
    warn_if_busy(load)
    summary = run_throughput(config)
    print(f"{summary.calls} calls timed, {summary.skipped} already there -> {display(summary.out_dir)}")
    _print_summary(summarize(read_requests(summary.out_dir)))
    for line in summary.errors or []:
        print(f"error: {line}", file=sys.stderr)
    return 2 if summary.errors else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
