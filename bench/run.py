"""Benchmark decoding methods on a prompt set: wall-clock speed, accepted length, exact outputs.

    python -m bench.run --methods hf-greedy,ar,hf-pld,medusa --prompts mtbench \\
        [--limit N] [--categories writing,math] [--turns 1|2] [--max-new-tokens 256] \\
        [--repeats R] [--seed S] [--out results/bench/NAME] [--shard i/n] \\
        [--tree FILE | --preset NAME | --budget N] [--temperature T] [--posterior-threshold EPS] \\
        [--posterior-alpha DELTA] [--threads N] [--backbone ...] [--heads DIR] [--device cpu] [--dtype auto]
    python -m bench.summarize results/bench/NAME

Methods (`bench.methods`): hf-greedy, hf-pld, ar, medusa, medusa-typical, hf-sample. `--limit N`
keeps the first N prompts of each category; `--turns 2` also asks each second turn after the
method's own first answer.

How it measures. Each method is warmed up once (not recorded). Then, per prompt, turn and repeat,
the methods run one after another (their order rotated from prompt to prompt) so drift of the
machine hits all alike. The timer wraps the method's generate call only: tokenisation, detokenising
and the quality scores (log-likelihood of the answer under the backbone at `--temperature`, share
of argmax tokens) happen outside it. Thread count, dtype and device are fixed for the whole run and
recorded on every row with the commit, date, device name and library versions.

Resumable. Records already in the run folder are skipped, every write is atomic, and Ctrl-C
leaves valid files (`bench.records`). Resuming with settings that change outputs (backbone, heads,
tree, max-new-tokens, temperature, eps, delta, seed, dtype, device, threads) is refused.
`--shard i/n` runs every n-th prompt; `python -m bench.merge OUT SHARD_DIR...` joins the shards.

Library use (tests inject a tiny model): ``run_benchmark(BenchConfig(...), backbone=..., heads=...)``.
Bad input prints one line ``error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import records as R
from bench.methods import (
    GREEDY,
    NEEDS_HEADS,
    MethodContext,
    MethodSettings,
    build_method,
    check_methods,
)
from bench.prompts import BenchPrompt, load_bench_prompts, shard, source_name
from medusa.acceptance import AcceptanceConfig
from medusa.backbone import DEFAULT_BACKBONE, Backbone, load_backbone, parse_dtype
from medusa.decode import DecodeConfig, Proposer
from medusa.errors import WorkbenchError, run_cli
from medusa.heads import DEFAULT_HEADS_DIR, heads_fingerprint
from trees.tree import Tree

_ACC = AcceptanceConfig()
RESULTS_DIR = R.REPO_ROOT / "results" / "bench"


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run's settings; every default of the harness is defined here."""

    methods: tuple[str, ...] = ("hf-greedy", "ar", "hf-pld", "medusa")
    prompts: str = "mtbench"
    categories: tuple[str, ...] = ()
    limit: int | None = None  # first N prompts per category
    turns: int = 1
    max_new_tokens: int = DecodeConfig().max_new_tokens
    repeats: int = 1
    seed: int = 0
    out: str | None = None  # default results/bench/<prompt set>
    shard: tuple[int, int] = (0, 1)
    backbone: str = DEFAULT_BACKBONE
    heads: str | None = None  # default: the shipped heads, else untrained ones
    device: str = "cpu"
    dtype: str = "auto"
    threads: int | None = None  # default: torch's current setting
    tree_file: str | None = None
    preset: str | None = None
    budget: int | None = None
    temperature: float = 0.7  # for medusa-typical, hf-sample and the log-likelihood scores
    posterior_threshold: float = _ACC.posterior_threshold
    posterior_alpha: float = _ACC.posterior_alpha
    pld_tokens: int = 10
    pld_max_ngram: int = 2
    warmup_tokens: int = 16  # 0: no warm-up
    compile: bool = False  # torch.compile the engine's verify forward (ar, medusa, medusa-typical)
    score_quality: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        check_methods(self.methods)
        if self.turns not in (1, 2):
            raise WorkbenchError(f"--turns must be 1 or 2, got {self.turns}")
        if self.repeats < 1:
            raise WorkbenchError(f"--repeats must be >= 1, got {self.repeats}")
        if self.max_new_tokens < 1:
            raise WorkbenchError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if sum(x is not None for x in (self.tree_file, self.preset, self.budget)) > 1:
            raise WorkbenchError("give at most one of --tree, --preset, --budget")
        if self.budget is not None and self.budget < 1:
            raise WorkbenchError(f"--budget must be >= 1, got {self.budget}")
        if self.temperature < 0:
            raise WorkbenchError(f"--temperature must be >= 0, got {self.temperature}")
        if self.threads is not None and self.threads < 1:
            raise WorkbenchError(f"--threads must be >= 1, got {self.threads}")
        if self.pld_tokens < 1 or self.pld_max_ngram < 1:
            raise WorkbenchError("--pld-tokens and --pld-max-ngram must be >= 1")
        AcceptanceConfig(self.temperature, self.posterior_threshold, self.posterior_alpha)

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else RESULTS_DIR / source_name(self.prompts)

    @property
    def needs_tree(self) -> bool:
        return any(m in NEEDS_HEADS for m in self.methods)


@dataclass
class RunSummary:
    """What `run_benchmark` did."""

    out_dir: Path
    written: int = 0
    skipped: int = 0
    keys: list[tuple[str, int, str, int]] = field(default_factory=list)


def record_seed(seed: int, question_id: str, turn: int, repeat: int) -> int:
    """A per-record seed shared by every method, independent of sharding and order."""
    digest = hashlib.sha256(f"{seed}/{question_id}/{turn}/{repeat}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def resolve_tree(config: BenchConfig) -> Tree:
    """The tree of the medusa methods: --tree, --preset, --budget (searched now), else the default."""
    from medusa.generate import resolve_tree as cli_tree

    if config.budget is not None:
        try:
            from trees.search import search
        except ImportError as e:
            raise WorkbenchError(f"--budget needs trees.search, which cannot be imported here ({e})") from None
        return search("greedy", node_budget=config.budget).tree
    return cli_tree(config.tree_file, config.preset)


def resolve_heads(config: BenchConfig, backbone: Backbone) -> tuple[Proposer, str]:
    """(heads, name for the records): --heads, else the shipped heads, else untrained heads."""
    from medusa.generate import resolve_heads as cli_heads

    if config.heads is not None:
        name, folder = config.heads, Path(config.heads)
    elif (DEFAULT_HEADS_DIR / "config.json").is_file():
        name, folder = str(DEFAULT_HEADS_DIR.relative_to(R.REPO_ROOT)), DEFAULT_HEADS_DIR
    else:
        return cli_heads(backbone, None), "untrained"
    heads = cli_heads(backbone, config.heads)
    # The weights' fingerprint is part of the name, so a run folder never mixes retrained heads.
    return heads, f"{name}@{heads_fingerprint(folder)}"


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


def _identity(config: BenchConfig, backbone: Backbone, heads_name: str, tree: Tree | None, threads: int) -> dict[str, Any]:
    """The settings that change outputs or speeds; a run folder holds records of one identity."""
    return {
        "prompts": source_name(config.prompts),
        "backbone": backbone.name,
        "heads": heads_name,
        "tree": tree.to_dict() if tree is not None else None,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.seed,
        "temperature": config.temperature,
        "posterior_threshold": config.posterior_threshold,
        "posterior_alpha": config.posterior_alpha,
        "pld_tokens": config.pld_tokens,
        "pld_max_ngram": config.pld_max_ngram,
        "device": str(backbone.device),
        "dtype": str(backbone.dtype).removeprefix("torch."),
        "threads": threads,
        "compile": config.compile,
    }


_OPTIONAL = ("heads", "tree")  # empty in runs without medusa methods; filled in when they join


def merge_identity(before: dict[str, Any], identity: dict[str, Any], where: str) -> dict[str, Any]:
    """`before` with `identity`'s optional blanks filled; refuses any other difference."""
    merged = dict(before)
    for k, v in identity.items():
        was = before.get(k)
        if k in _OPTIONAL and (not was or not v):
            merged[k] = was or v
            continue
        same = was.get("paths") == v.get("paths") if k == "tree" else was == v
        if not same:
            shown = (lambda t: t.get("name")) if k == "tree" else repr
            raise WorkbenchError(f"{where} holds records made with {k}={shown(was)}, not {shown(v)}; use another --out")
    return merged


def check_identity(out_dir: Path, identity: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the folder's run.json, the merged identity); refuse a folder written with another identity."""
    old = R.read_run_json(out_dir)
    if old is None:
        return None, identity
    return old, merge_identity(old.get("identity", {}), identity, str(out_dir))


def _work(prompts: Sequence[BenchPrompt], methods: Sequence[str], repeats: int) -> list[tuple[BenchPrompt, int, int, str]]:
    """(prompt, turn, repeat, method) in run order: methods rotated per prompt, interleaved."""
    out = []
    for n, p in enumerate(prompts):
        order = list(methods[n % len(methods):]) + list(methods[: n % len(methods)])
        for turn in range(1, len(p.turns) + 1):
            for r in range(repeats):
                out.extend((p, turn, r, m) for m in order)
    return out


def _sync(backbone: Backbone) -> None:
    if backbone.device.type == "cuda":
        torch.cuda.synchronize(backbone.device)


def _messages(p: BenchPrompt, turn: int, previous_answer: str | None) -> list[dict[str, str]]:
    if turn == 1:
        return [{"role": "user", "content": p.turns[0]}]
    return [{"role": "user", "content": p.turns[0]},
            {"role": "assistant", "content": previous_answer or ""},
            {"role": "user", "content": p.turns[1]}]


def run_benchmark(
    config: BenchConfig,
    backbone: Backbone | None = None,
    heads: Proposer | None = None,
    heads_name: str = "injected",
    tree: Tree | None = None,
) -> RunSummary:
    """Run (or resume) a benchmark; returns what was written. Models may be injected (tests)."""
    prompts = load_bench_prompts(config.prompts, config.categories or None, config.limit, config.turns)
    mine = shard(prompts, *config.shard)
    out_dir = config.out_dir

    threads = config.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    if backbone is None:
        backbone = load_backbone(config.backbone, dtype=parse_dtype(config.dtype, config.device), device=config.device)
    needs_heads = any(m in NEEDS_HEADS for m in config.methods)
    if needs_heads and heads is None:
        heads, heads_name = resolve_heads(config, backbone)
    if not needs_heads:
        heads, heads_name = None, ""
    if config.needs_tree and tree is None:
        tree = resolve_tree(config)
    if not config.needs_tree:
        tree = None

    identity = _identity(config, backbone, heads_name, tree, threads)
    old, identity = check_identity(out_dir, identity)
    settings = MethodSettings(config.temperature, config.posterior_threshold, config.posterior_alpha,
                              config.pld_tokens, config.pld_max_ngram, config.compile)
    context = MethodContext(backbone=backbone, settings=settings, heads=heads, heads_name=heads_name, tree=tree)
    methods = {name: build_method(name, context) for name in config.methods}

    store = R.RecordStore(out_dir)
    provenance = R.Provenance.collect(str(backbone.device), threads, identity["dtype"])
    sessions = (old or {}).get("sessions", []) + [{
        **asdict(provenance), "methods": list(config.methods), "shard": f"{config.shard[0]}/{config.shard[1]}",
        "prompts": len(mine), "config": {k: v for k, v in asdict(config).items() if k != "progress"},
    }]
    R.write_run_json(out_dir, {"identity": identity, "sessions": sessions})

    work = _work(mine, config.methods, config.repeats)
    summary = RunSummary(out_dir)
    todo = [w for w in work if (w[0].id, w[1], w[3], w[2]) not in store]
    summary.skipped = len(work) - len(todo)
    if not todo:
        return summary

    eos = backbone.eos_token_ids
    if config.warmup_tokens > 0:
        warm_ids = backbone.chat_ids(_messages(todo[0][0], 1, None))
        for method in methods.values():
            method.generate(warm_ids, config.warmup_tokens, config.seed)

    bar = None
    if config.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(work), initial=summary.skipped, unit="rec", desc=f"bench {out_dir.name}", file=sys.stderr)
    try:
        for p, turn, repeat, name in todo:
            key = (p.id, turn, name, repeat)
            previous = None
            if turn > 1:
                previous = store.tokens[(p.id, turn - 1, name, repeat)]["text"]
            prompt_ids = backbone.chat_ids(_messages(p, turn, previous))
            seed = record_seed(config.seed, p.id, turn, repeat)
            method = methods[name]
            _sync(backbone)
            t0 = time.perf_counter()
            out = method.generate(prompt_ids, config.max_new_tokens, seed)
            _sync(backbone)
            wall_s = time.perf_counter() - t0
            ids = R.count_new_tokens(out.new_ids, eos, config.max_new_tokens)
            record, tokens = _make_record(config, backbone, p, turn, repeat, method, prompt_ids, ids, out,
                                          wall_s, seed, provenance)
            store.append(record, tokens)
            summary.written += 1
            summary.keys.append(key)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{name} {record.tokens_per_s:.1f} tok/s")
    finally:
        if bar is not None:
            bar.close()
    return summary


def _make_record(config, backbone, p, turn, repeat, method, prompt_ids, ids, out, wall_s, seed, provenance):
    eos = set(backbone.eos_token_ids)
    steps = out.steps
    desc = {"heads": "", "tree": "", "node_budget": float("nan"), "temperature": 0.0,
            "posterior_threshold": float("nan"), "posterior_alpha": float("nan"), "pld_tokens": float("nan"),
            **method.describe()}
    loglik, agree = (quality_scores(backbone, prompt_ids, ids, config.temperature)
                     if config.score_quality else (float("nan"), float("nan")))
    accepted = [s.accepted_length for s in steps] if steps is not None else []
    nan = float("nan")
    record = R.Record(
        source=source_name(config.prompts), prompt_index=p.prompt_index, question_id=p.id, category=p.category,
        turn=turn, method=method.name, repeat=repeat, greedy=method.name in GREEDY,
        backbone=backbone.name, heads=desc["heads"], tree=desc["tree"], node_budget=float(desc["node_budget"]),
        temperature=float(desc["temperature"]), posterior_threshold=float(desc["posterior_threshold"]),
        posterior_alpha=float(desc["posterior_alpha"]), pld_tokens=float(desc["pld_tokens"]),
        max_new_tokens=config.max_new_tokens, seed=seed,
        prompt_tokens=len(prompt_ids), new_tokens=len(ids), wall_s=wall_s,
        tokens_per_s=len(ids) / wall_s if wall_s > 0 else nan,
        stop_reason="eos" if ids and ids[-1] in eos else "length",
        steps=float(len(steps)) if steps is not None else nan,
        accepted_tokens=float(sum(accepted)) if steps is not None else nan,
        mean_accepted_length=sum(accepted) / len(accepted) if accepted else nan,
        prefill_s=out.prefill_s,
        heads_s=sum(s.heads_s for s in steps) if steps is not None else nan,
        verify_s=sum(s.verify_s for s in steps) if steps is not None else nan,
        bookkeeping_s=sum(s.bookkeeping_s for s in steps) if steps is not None else nan,
        loglik_per_token=loglik, argmax_agreement=agree,
        **asdict(provenance),
    )
    tokens = R.Tokens(
        question_id=p.id, turn=turn, method=method.name, repeat=repeat, prompt_ids=list(prompt_ids),
        output_ids=ids, text=backbone.decode(ids), accepted_lengths=accepted,
        heads_s=[s.heads_s for s in steps or []], verify_s=[s.verify_s for s in steps or []],
        bookkeeping_s=[s.bookkeeping_s for s in steps or []],
    )
    return record, tokens


def _csv_list(values: Sequence[str] | None) -> tuple[str, ...]:
    return tuple(v for item in values or () for v in item.split(",") if v)


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise WorkbenchError(f"--shard must look like i/n (e.g. 0/2), got {text!r}") from None
    return i, n


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    from medusa.generate import add_model_args, add_tree_args

    d = BenchConfig()
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(d.methods), help="comma-separated: hf-greedy,hf-pld,ar,medusa,medusa-typical,hf-sample")
    p.add_argument("--prompts", default=d.prompts, help="mtbench, sharegpt (held-out split), gsm8k, or a JSONL file")
    p.add_argument("--categories", nargs="+", default=None, help="keep only these categories (comma or space separated)")
    p.add_argument("--limit", type=int, default=d.limit, help="first N prompts of each category")
    p.add_argument("--turns", type=int, default=d.turns, choices=(1, 2), help="1: first turns; 2: also second turns")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=None, help="run folder (default results/bench/<prompts>)")
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th prompt starting at i (0-based)")
    add_model_args(p)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (default: torch's setting)")
    add_tree_args(p)
    p.add_argument("--budget", type=int, default=None, help="search a greedy tree of N nodes from the shipped accuracy table")
    p.add_argument("--temperature", type=float, default=d.temperature, help="medusa-typical, hf-sample and quality scores")
    p.add_argument("--posterior-threshold", type=float, default=d.posterior_threshold, help="typical acceptance eps")
    p.add_argument("--posterior-alpha", type=float, default=d.posterior_alpha, help="typical acceptance delta")
    p.add_argument("--pld-tokens", type=int, default=d.pld_tokens, help="hf-pld prompt_lookup_num_tokens")
    p.add_argument("--pld-max-ngram", type=int, default=d.pld_max_ngram, help="hf-pld max_matching_ngram_size")
    p.add_argument("--warmup-tokens", type=int, default=d.warmup_tokens)
    p.add_argument("--no-quality", action="store_true", help="skip the log-likelihood scores")
    p.add_argument("--compile", action="store_true", help="torch.compile the engine's verify forward")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    return BenchConfig(
        methods=_csv_list([a.methods]), prompts=a.prompts, categories=_csv_list(a.categories), limit=a.limit,
        turns=a.turns, max_new_tokens=a.max_new_tokens, repeats=a.repeats, seed=a.seed, out=a.out,
        shard=_shard(a.shard), backbone=a.backbone, heads=a.heads, device=a.device, dtype=a.dtype,
        threads=a.threads, tree_file=a.tree, preset=a.preset, budget=a.budget, temperature=a.temperature,
        posterior_threshold=a.posterior_threshold, posterior_alpha=a.posterior_alpha, pld_tokens=a.pld_tokens,
        pld_max_ngram=a.pld_max_ngram, warmup_tokens=a.warmup_tokens, score_quality=not a.no_quality,
        progress=not a.no_progress, compile=a.compile,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    summary = run_benchmark(config)
    print(f"{summary.written} records written, {summary.skipped} already there -> {summary.out_dir}")
    print(f"summarise with: python -m bench.summarize {summary.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
