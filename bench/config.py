"""One benchmark run's settings (`BenchConfig`, each default defined once) and the flags that set them.

`bench.run` measures with a `BenchConfig`; `parse_args` builds one from `python -m bench.run`'s
command line (see that module for the flags). Method traits come from `bench.methods.METHODS`, a
method's own settings from its `Options` (`--method-option METHOD.OPTION=VALUE`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.methods import METHODS, check_methods, resolve_options
from bench.prompts import source_name
from common.cli import Parser, add_threads, comma_list
from common.errors import WorkbenchError
from common.paths import SCRATCH_BENCH
from medusa.acceptance import AcceptanceConfig
from medusa.backbone import DEFAULT_BACKBONE
from medusa.decode import DecodeConfig
from medusa.resolve import add_model_args, add_tree_args

_ACC = AcceptanceConfig()


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
    out: str | None = None  # default results/_scratch/bench/<prompt set> (never a committed run)
    shard: tuple[int, int] = (0, 1)
    backbone: str = DEFAULT_BACKBONE
    heads: str | None = None  # heads folder; default: the shipped heads, else untrained ones
    device: str = "cpu"
    dtype: str = "auto"
    threads: int | None = None  # torch threads the run must use; None: torch's current setting
    tree_file: str | None = None
    preset: str | None = None
    budget: int | None = None
    temperature: float = 0.7  # for medusa-typical, hf-sample and the log-likelihood scores
    posterior_threshold: float = _ACC.posterior_threshold
    posterior_alpha: float = _ACC.posterior_alpha
    # method -> {option: value} overriding the defaults of that method's `Options`
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
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
        stray = [m for m in self.method_options if m not in self.methods]
        if stray:
            raise WorkbenchError(f"--method-option for {stray[0]}, which is not among --methods")
        # Unknown options and bad values fail here, before anything is loaded; the overrides are
        # kept typed (as the method's `Options` holds them) for run.json.
        resolved = self.options()
        object.__setattr__(self, "method_options", {m: {k: getattr(resolved[m], k) for k in overrides}
                                                    for m, overrides in self.method_options.items()})
        AcceptanceConfig(self.temperature, self.posterior_threshold, self.posterior_alpha)

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else SCRATCH_BENCH / source_name(self.prompts)

    @property
    def needs_heads(self) -> bool:
        return any(METHODS[m].needs_heads for m in self.methods)

    @property
    def needs_tree(self) -> bool:
        return any(METHODS[m].needs_tree for m in self.methods)

    def options(self) -> dict[str, Any]:
        """Each method's resolved `Options` (its defaults with this run's overrides)."""
        return {m: resolve_options(m, self.method_options.get(m)) for m in self.methods}


# ---- command line -------------------------------------------------------------------------------
def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise WorkbenchError(f"--shard must look like i/n (e.g. 0/2), got {text!r}") from None
    return i, n


def parse_method_options(items: Sequence[str] | None) -> dict[str, dict[str, str]]:
    """`["hf-pld.num_tokens=10", ...]` (or comma-joined) -> {"hf-pld": {"num_tokens": "10"}}."""
    out: dict[str, dict[str, str]] = {}
    for item in comma_list(items, flag="--method-option"):
        target, eq, value = item.partition("=")
        method, dot, key = target.strip().rpartition(".")
        if not (eq and dot and method and key):
            raise WorkbenchError(f"--method-option must look like METHOD.OPTION=VALUE (e.g. hf-pld.num_tokens=10), got {item!r}")
        out.setdefault(method, {})[key] = value.strip()
    return out


def parser() -> Parser:
    """The flags of `python -m bench.run`."""
    d = BenchConfig()
    p = Parser(prog="python -m bench.run", description="Benchmark decoding methods on a prompt set.")
    p.add_argument("--methods", default=",".join(d.methods), help=f"comma-separated: {','.join(METHODS)}")
    p.add_argument("--prompts", default=d.prompts, help="prompt set: mtbench, sharegpt (held-out split), gsm8k, or a JSONL file")
    p.add_argument("--categories", nargs="+", default=None, help="keep only these categories (comma or space separated)")
    p.add_argument("--limit", type=int, default=d.limit, help="first N prompts of each category")
    p.add_argument("--turns", type=int, default=d.turns, choices=(1, 2), help="1: first turns; 2: also second turns")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=None,
                   help="run folder (default results/_scratch/bench/<prompts>; results/bench/NAME makes a committed run)")
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th prompt starting at i (0-based)")
    add_model_args(p)
    add_threads(p)
    add_tree_args(p)
    p.add_argument("--budget", type=int, default=None, help="search a greedy tree of N nodes from the shipped accuracy table")
    p.add_argument("--temperature", type=float, default=d.temperature, help="medusa-typical, hf-sample and quality scores")
    p.add_argument("--posterior-threshold", type=float, default=d.posterior_threshold, help="typical acceptance eps")
    p.add_argument("--posterior-alpha", type=float, default=d.posterior_alpha, help="typical acceptance delta")
    p.add_argument("--method-option", action="append", default=None, metavar="METHOD.OPTION=VALUE",
                   help="a method's own setting, e.g. hf-pld.num_tokens=10 or hf-pld.max_ngram=2 (repeatable)")
    p.add_argument("--warmup-tokens", type=int, default=d.warmup_tokens)
    p.add_argument("--no-quality", action="store_true", help="skip the log-likelihood scores")
    p.add_argument("--compile", action="store_true", help="torch.compile the engine's verify forward")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    return config_from_args(parser().parse_args(argv))


def config_from_args(a: Any) -> BenchConfig:
    """The `BenchConfig` of parsed `parser()` flags (`bench.throughput` adds its own to the same parser)."""
    return BenchConfig(
        methods=tuple(comma_list(a.methods, flag="--methods")), prompts=a.prompts,
        categories=tuple(comma_list(a.categories, flag="--categories")), limit=a.limit, turns=a.turns,
        max_new_tokens=a.max_new_tokens, repeats=a.repeats, seed=a.seed, out=a.out, shard=_shard(a.shard),
        backbone=a.backbone, heads=a.heads, device=a.device, dtype=a.dtype, threads=a.threads, tree_file=a.tree,
        preset=a.preset, budget=a.budget, temperature=a.temperature, posterior_threshold=a.posterior_threshold,
        posterior_alpha=a.posterior_alpha, method_options=parse_method_options(a.method_option),
        warmup_tokens=a.warmup_tokens, score_quality=not a.no_quality, progress=not a.no_progress,
        compile=a.compile,
    )


