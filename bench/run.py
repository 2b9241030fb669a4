"""Benchmark decoding methods on a prompt set: wall-clock speed, accepted length, exact outputs.

    python -m bench.run --methods hf-greedy,ar,hf-pld,medusa --prompts mtbench \\
        [--limit N] [--categories writing,math] [--turns 1|2] [--max-new-tokens 256] \\
        [--repeats R] [--seed S] [--out FOLDER] [--shard i/n] \\
        [--tree FILE | --preset NAME | --budget N] [--temperature T] [--posterior-threshold EPS] \\
        [--posterior-alpha DELTA] [--method-option hf-pld.num_tokens=10 ...] \\
        [--threads N] [--backbone ...] [--heads DIR] [--device cpu] [--dtype auto]
    python -m bench.summarize results/_scratch/bench/mtbench

Where it writes: ``--out FOLDER``, else ``results/_scratch/bench/<prompt set>`` (git-ignored), so a
trial never lands among the committed runs under ``results/bench/`` that the analysis reads (the
reference run, ``results/bench/mtbench-ref``, is made by ``make bench``).

Methods (`bench.methods`): hf-greedy, hf-pld, ar, medusa, medusa-typical, hf-sample. `--limit N`
keeps the first N prompts of each category; `--turns 2` also asks each second turn after the
method's own first answer. A method's own settings are set with `--method-option
METHOD.OPTION=VALUE` (repeatable or comma-separated; e.g. `hf-pld.num_tokens`, `hf-pld.max_ngram`,
see each method's `Options`); the resolved options of every method go into the run's identity
and each record's `method_options` column.

How it measures. Each method is warmed up once (not recorded). Then, per prompt, turn and repeat,
the methods run one after another (their order rotated from prompt to prompt) so drift of the
machine hits all alike. The timer wraps the method's generate call only: tokenisation, detokenising
and the quality scores (log-likelihood of the answer under the backbone at `--temperature`, share
of argmax tokens) happen outside it. Thread count, dtype and device are fixed for the whole run and
recorded on every row with the commit, date, device name and library versions, and so is the
1-minute load average just before and after the timed call (`load_start`, `load_end`; read outside
the timer), which `bench.summarize` flags when it tops the thread count. `--threads`
defaults to torch's own choice (all cores); one `warning:` line before the first timed record says
when the load average shows other processes sharing the cores.

Resumable. Records already in the run folder are skipped, every write is atomic, and Ctrl-C
leaves valid files (`bench.records`). Resuming with settings that change outputs (`bench.identity`:
backbone, heads, tree, max-new-tokens, temperature, eps, delta, method options, seed, dtype,
device, threads) is refused. `--shard i/n` runs every n-th prompt;
`python -m bench.merge --out OUT SHARD_DIR...` joins the shards.

Library use (tests inject a tiny model): ``run_benchmark(BenchConfig(...), backbone=..., heads=...)``.
The library never changes torch's thread count: `BenchConfig.threads`, when set, must equal it
(the CLI's `--threads` sets it first). Bad input prints one line ``error: ...`` and exits with status 2.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench import records as R
from bench.config import BenchConfig, parse_args
from bench.identity import check_identity
from bench.methods import (
    Method,
    MethodContext,
    MethodOutput,
    MethodSettings,
    build_method,
    options_dict,
    options_json,
)
from bench.prompts import BenchPrompt, load_bench_prompts, shard, source_name, turn_messages
from common.cli import apply_threads, load_average, run_cli, warn_if_busy
from common.errors import WorkbenchError
from common.provenance import Provenance
from medusa.backbone import Backbone, load_backbone, parse_dtype
from medusa.decode import Proposer, StepStats
from medusa.resolve import resolve_heads, resolve_tree, warn_foreign_tree
from trees.search import search
from trees.tree import Tree

__all__ = ["BenchConfig", "RunSummary", "run_benchmark", "parse_args", "main"]


@dataclass
class RunSummary:
    """What `run_benchmark` did."""

    out_dir: Path
    written: int = 0
    skipped: int = 0
    keys: list[tuple[str, int, str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class Models:
    """What the methods run on: the backbone and, when a method needs them, heads and tree."""

    backbone: Backbone
    heads: Proposer | None
    heads_name: str
    tree: Tree | None


@dataclass(frozen=True)
class Job:
    """One record to make: a method's answer to one turn of one prompt, in one repeat."""

    prompt: BenchPrompt
    turn: int
    repeat: int
    method: str

    @property
    def key(self) -> tuple[str, int, str, int]:
        return (self.prompt.id, self.turn, self.method, self.repeat)


@dataclass(frozen=True)
class Measurement:
    """What one timed generate call gave: the counted new ids, the seconds it took, the load around it."""

    prompt_ids: list[int]
    ids: list[int]
    output: MethodOutput
    wall_s: float
    seed: int
    load_start: float  # 1-minute load average just before the call (NaN where the platform has none)
    load_end: float  # ... and just after it


def record_seed(seed: int, question_id: str, turn: int, repeat: int) -> int:
    """A per-record seed shared by every method, independent of sharding and order."""
    digest = hashlib.sha256(f"{seed}/{question_id}/{turn}/{repeat}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def run_tree(config: BenchConfig) -> Tree:
    """The tree of the medusa methods: --tree, --preset, --budget (searched now), else the default."""
    if config.budget is not None:
        return search("greedy", node_budget=config.budget).tree
    return resolve_tree(config.tree_file, config.preset)


@torch.inference_mode()
def quality_scores(backbone: Backbone, prompt_ids: Sequence[int], output_ids: Sequence[int], temperature: float) -> tuple[float, float]:
    """(mean log p_T of each output token given its prefix, share of tokens that are the argmax)."""
    if not output_ids or temperature <= 0:
        return float("nan"), float("nan")
    ids = torch.tensor([list(prompt_ids) + list(output_ids)], dtype=torch.long, device=backbone.device)
    logits = backbone.model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()  # (n, V)
    target = ids[0, len(prompt_ids):]
    logp = torch.log_softmax(logits / temperature, dim=-1).gather(1, target[:, None])[:, 0]
    agree = (logits.argmax(-1) == target).float().mean()
    return float(logp.mean()), float(agree)


def run_identity(config: BenchConfig, models: Models, threads: int) -> dict[str, Any]:
    """The settings that change outputs or speeds (`bench.identity`)."""
    return {
        "prompts": source_name(config.prompts),
        "backbone": models.backbone.name,
        "heads": models.heads_name,
        "tree": models.tree.to_dict() if models.tree is not None else None,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.seed,
        "temperature": config.temperature,
        "posterior_threshold": config.posterior_threshold,
        "posterior_alpha": config.posterior_alpha,
        "method_options": {m: options_dict(o) for m, o in config.options().items() if options_dict(o)},
        "device": str(models.backbone.device),
        "dtype": str(models.backbone.dtype).removeprefix("torch."),
        "threads": threads,
        "compile": config.compile,
    }


def _work(prompts: Sequence[BenchPrompt], methods: Sequence[str], repeats: int) -> list[Job]:
    """Jobs in run order: methods rotated per prompt, interleaved."""
    out = []
    for n, p in enumerate(prompts):
        order = list(methods[n % len(methods):]) + list(methods[: n % len(methods)])
        for turn in range(1, len(p.turns) + 1):
            for r in range(repeats):
                out.extend(Job(p, turn, r, m) for m in order)
    return out


def _sync(backbone: Backbone) -> None:
    if backbone.device.type == "cuda":
        torch.cuda.synchronize(backbone.device)


# ---- the phases of a run ------------------------------------------------------------------------
def run_threads(config: BenchConfig) -> int:
    """torch's thread count, which must be the one the run asks for (only CLIs change it)."""
    threads = torch.get_num_threads()
    if config.threads is not None and config.threads != threads:
        raise WorkbenchError(f"the run asks for {config.threads} torch threads but torch uses {threads}: "
                             "set them first (common.cli.apply_threads; bench.run's --threads does)")
    return threads


def load_models(config: BenchConfig, backbone: Backbone | None, heads: Proposer | None, heads_name: str,
                 tree: Tree | None) -> Models:
    """The injected models, else those the config names; heads and tree only where a method needs them."""
    if backbone is None:
        backbone = load_backbone(config.backbone, dtype=parse_dtype(config.dtype, config.device), device=config.device)
    if not config.needs_heads:
        heads, heads_name = None, ""
    elif heads is None:
        resolved = resolve_heads(config.heads, backbone)
        heads, heads_name = resolved.heads, resolved.name
    if not config.needs_tree:
        tree = None
    elif tree is None:
        tree = run_tree(config)
        warn_foreign_tree(tree, heads_name, backbone)
    return Models(backbone, heads, heads_name, tree)


def build_methods(config: BenchConfig, models: Models) -> dict[str, Method]:
    settings = MethodSettings(config.temperature, config.posterior_threshold, config.posterior_alpha, config.compile)
    context = MethodContext(backbone=models.backbone, settings=settings, heads=models.heads,
                            heads_name=models.heads_name, tree=models.tree)
    return {name: build_method(name, context, options) for name, options in config.options().items()}


def _open_run(config: BenchConfig, models: Models, threads: int, prompts: int) -> tuple[R.RecordStore, Provenance]:
    """Check the folder's identity, add this session to run.json, open the record store."""
    out_dir = config.out_dir
    old, identity = check_identity(out_dir, run_identity(config, models, threads))
    store = R.RecordStore(out_dir)
    provenance = Provenance.collect(str(models.backbone.device), dtype=identity["dtype"], threads=threads)
    sessions = (old or {}).get("sessions", []) + [{
        **provenance.as_dict(), "methods": list(config.methods), "shard": f"{config.shard[0]}/{config.shard[1]}",
        "prompts": prompts, "config": {k: v for k, v in asdict(config).items() if k != "progress"},
    }]
    R.write_run_json(out_dir, {"identity": identity, "sessions": sessions})
    return store, provenance


def _measure(job: Job, method: Method, backbone: Backbone, store: R.RecordStore, config: BenchConfig) -> Measurement:
    """Build the job's prompt (turn 2 after the method's own first answer) and time one generate call."""
    previous = store.tokens[(job.prompt.id, job.turn - 1, job.method, job.repeat)]["text"] if job.turn > 1 else None
    prompt_ids = backbone.chat_ids(turn_messages(job.prompt.turns, job.turn, previous))
    seed = record_seed(config.seed, job.prompt.id, job.turn, job.repeat)
    _sync(backbone)
    load_start = _load()  # outside the timer: a read of /proc/loadavg
    t0 = time.perf_counter()
    out = method.generate(prompt_ids, config.max_new_tokens, seed)
    _sync(backbone)
    wall_s = time.perf_counter() - t0
    load_end = _load()
    ids = R.count_new_tokens(out.new_ids, backbone.eos_token_ids, config.max_new_tokens)
    return Measurement(list(prompt_ids), ids, out, wall_s, seed, load_start, load_end)


def _load() -> float:
    """The 1-minute load average now (this run's own threads included), NaN where there is none."""
    load = load_average()
    return float("nan") if load is None else load


def _engine_columns(steps: list[StepStats] | None) -> dict[str, float]:
    """The records' engine-only columns (NaN for methods that report no steps)."""
    nan = float("nan")
    if steps is None:
        return dict.fromkeys(("steps", "accepted_tokens", "mean_accepted_length", "heads_s", "verify_s",
                              "bookkeeping_s"), nan)
    accepted = [s.accepted_length for s in steps]
    return {"steps": float(len(steps)), "accepted_tokens": float(sum(accepted)),
            "mean_accepted_length": sum(accepted) / len(accepted) if accepted else nan,
            "heads_s": sum(s.heads_s for s in steps), "verify_s": sum(s.verify_s for s in steps),
            "bookkeeping_s": sum(s.bookkeeping_s for s in steps)}


def _make_record(config: BenchConfig, backbone: Backbone, job: Job, method: Method, m: Measurement,
                 provenance: Provenance) -> tuple[R.Record, R.Tokens]:
    """The records.csv row and tokens.jsonl line of one measurement."""
    desc = {"heads": "", "tree": "", "node_budget": float("nan"), "temperature": 0.0,
            "posterior_threshold": float("nan"), "posterior_alpha": float("nan"), **method.describe()}
    loglik, agree = (quality_scores(backbone, m.prompt_ids, m.ids, config.temperature)
                     if config.score_quality else (float("nan"), float("nan")))
    p, steps = job.prompt, m.output.steps
    record = R.Record(
        source=source_name(config.prompts), prompt_index=p.prompt_index, question_id=p.id, category=p.category,
        turn=job.turn, method=method.name, repeat=job.repeat, greedy=method.greedy,
        backbone=backbone.name, heads=desc["heads"], tree=desc["tree"], node_budget=float(desc["node_budget"]),
        temperature=float(desc["temperature"]), posterior_threshold=float(desc["posterior_threshold"]),
        posterior_alpha=float(desc["posterior_alpha"]), method_options=options_json(method.options),
        max_new_tokens=config.max_new_tokens, seed=m.seed,
        prompt_tokens=len(m.prompt_ids), new_tokens=len(m.ids), wall_s=m.wall_s,
        tokens_per_s=len(m.ids) / m.wall_s if m.wall_s > 0 else float("nan"),
        stop_reason="eos" if m.ids and m.ids[-1] in set(backbone.eos_token_ids) else "length",
        prefill_s=m.output.prefill_s, loglik_per_token=loglik, argmax_agreement=agree,
        load_start=m.load_start, load_end=m.load_end,
        **_engine_columns(steps), **provenance.as_dict(),
    )
    tokens = R.Tokens(
        question_id=p.id, turn=job.turn, method=method.name, repeat=job.repeat, prompt_ids=m.prompt_ids,
        output_ids=m.ids, text=backbone.decode(m.ids), accepted_lengths=[s.accepted_length for s in steps or []],
        heads_s=[s.heads_s for s in steps or []], verify_s=[s.verify_s for s in steps or []],
        bookkeeping_s=[s.bookkeeping_s for s in steps or []],
    )
    return record, tokens


def _warm_up(config: BenchConfig, methods: dict[str, Method], backbone: Backbone, first: Job) -> None:
    if config.warmup_tokens > 0:
        warm_ids = backbone.chat_ids(turn_messages(first.prompt.turns, 1))
        for method in methods.values():
            for ids in [warm_ids, *method.warmup_prompts(warm_ids, config.warmup_tokens)]:
                method.generate(ids, config.warmup_tokens, config.seed)


def run_benchmark(
    config: BenchConfig,
    backbone: Backbone | None = None,
    heads: Proposer | None = None,
    heads_name: str = "injected",
    tree: Tree | None = None,
    on_start: Callable[[], object] | None = None,
) -> RunSummary:
    """Run (or resume) a benchmark; returns what was written. Models may be injected (tests).

    `on_start()` is called once everything is loaded and checked, before the first timed record
    (the CLI: the busy-machine warning).
    """
    prompts = load_bench_prompts(config.prompts, config.categories or None, config.limit, config.turns)
    mine = shard(prompts, *config.shard)
    threads = run_threads(config)
    models = load_models(config, backbone, heads, heads_name, tree)
    methods = build_methods(config, models)
    store, provenance = _open_run(config, models, threads, len(mine))

    work = _work(mine, config.methods, config.repeats)
    summary = RunSummary(config.out_dir)
    todo = [job for job in work if job.key not in store]
    summary.skipped = len(work) - len(todo)
    if not todo:
        return summary
    if on_start is not None:
        on_start()
    _warm_up(config, methods, models.backbone, todo[0])
    bar = tqdm(total=len(work), initial=summary.skipped, unit="rec", desc=f"bench {config.out_dir.name}",
               file=sys.stderr, disable=not config.progress)
    with bar:
        for job in todo:
            method = methods[job.method]
            measured = _measure(job, method, models.backbone, store, config)
            record, tokens = _make_record(config, models.backbone, job, method, measured, provenance)
            store.append(record, tokens)
            summary.written += 1
            summary.keys.append(job.key)
            bar.update(1)
            bar.set_postfix_str(f"{job.method} {record.tokens_per_s:.1f} tok/s")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    load = load_average()  # the neighbours' load, read before ours adds to it
    config = parse_args(argv)
    apply_threads(config.threads)
    summary = run_benchmark(config, on_start=lambda: warn_if_busy(load))
    print(f"{summary.written} records written, {summary.skipped} already there -> {summary.out_dir}")
    print(f"summarise with: python -m bench.summarize {summary.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
