"""Batching: throughput and Medusa's speedup against batch size.

``batching``: `batching` -> batching_<run>, one per run. From ``throughput/<run>/requests.csv``
(`bench.throughput`; every run, or only ``--run NAME``): (a) throughput (new tokens per second of the whole call)
against batch size per method and tree, (b) speedup of each Medusa tree over `ar` and over
`hf-greedy` at the same batch size (1 = break-even), with the tokens per step printed beside it,
and (hollow squares) the speedup over `ar` the hardware-aware search predicted for the tree of each
batch size from its latency profile (`predicted_speedup`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis import load
from analysis.style import caption, method_color, new_figure, save
from bench.throughput import REQUESTS, read_requests, summarize
from common.errors import MissingResult, WorkbenchError
from trees.cost import load_profile

THROUGHPUT_DIR = "throughput"
COMMAND = "python -m bench.throughput --out results/throughput/NAME"


def throughput_runs(results: Path, run: str | None = None) -> list[Path]:
    """The run folders under results/throughput/ (only `run`'s when it names one), by name."""
    runs = sorted(p.parent for p in (results / THROUGHPUT_DIR).glob(f"*/{REQUESTS}"))
    if run:
        runs = [p for p in runs if p.name == run]
    if not runs:
        raise MissingResult(f"no throughput run {run or ''} under {load.display(results / THROUGHPUT_DIR)} "
                            f"(run `{COMMAND}` first)")
    return runs


def predicted_speedup(results: Path, tree_name: str, batch: int, threads: int | None = None) -> float:
    """What the hardware-aware search predicted for a tree over plain decoding at its batch size:
    tokens per step x T(B, 1) / T(B, N), from the tree's meta and the profile it was searched on
    (its ``--latency`` file, looked up under ``latency/``); NaN when either is missing or the tree
    was searched for another batch size or measured at other than `threads` threads. Verify time only: the heads and the
    bookkeeping of a step are not in it."""
    meta = load.read_json(results / "trees" / f"{tree_name}.json").get("meta", {})
    words = str(meta.get("command", "")).split()
    latency = words[words.index("--latency") + 1] if "--latency" in words[:-1] else ""
    profile = results / "latency" / Path(latency).name  # the profile the search read, under these results
    if not {"tokens_per_step", "verify_s"} <= meta.keys() or not latency or not profile.is_file() \
            or int(meta.get("batch", 1)) != batch:
        return float("nan")
    try:
        latency_profile = load_profile(profile)
        t1 = latency_profile.verify_time(1, meta.get("context") or 512, batch)
    except WorkbenchError:
        return float("nan")
    if threads is not None and "threads" in latency_profile.table and \
            set(latency_profile.table["threads"].astype(int)) != {int(threads)}:
        return float("nan")  # a profile measured at another thread count predicts another machine
    return float(meta["tokens_per_step"]) * t1 / float(meta["verify_s"])


def batching(results: Path, out: Path, run: str | None = None, **_: Any) -> list[Path]:
    """One figure per throughput run (only `run`'s when it names one; `--run` may name a benchmark
    run of another figure instead, then every throughput run is drawn)."""
    named = run if run and (results / THROUGHPUT_DIR / run / REQUESTS).is_file() else None
    return [path for folder in throughput_runs(results, named) for path in batching_run(results, out, folder)]


def batching_run(results: Path, out: Path, folder: Path) -> list[Path]:
    """The figure of one throughput run folder."""
    requests = read_requests(folder)
    table = summarize(requests)
    fig, axes = new_figure(ncols=2, width=5.0, height=3.7)
    tput, gain = axes[0, 0], axes[0, 1]
    for i, (method, rows) in enumerate(table.groupby("method", sort=False)):
        rows = rows.sort_values("batch_size")
        trees = rows["tree"].unique()
        tree = trees[0] if len(trees) == 1 else "a tree per batch size"
        tput.plot(rows["batch_size"], rows["tokens_per_s"], marker="o", lw=1.5, color=method_color(method, i),
                  label=f"{method} ({tree})" if method.startswith("medusa") else method)
        if method.startswith("medusa"):
            for b, t, n in zip(rows["batch_size"], rows["tokens_per_s"], rows["node_budget"]):
                tput.annotate(f"{int(n)} nodes", (b, t), textcoords="offset points", xytext=(3, -9), fontsize=6)
        if not method.startswith("medusa"):
            continue
        ar = "ar-compiled" if method.endswith("-compiled") else "ar"
        for base, style in (("ar", "-"), ("hf-greedy", "--")):
            col = f"speedup_vs_{base}"
            gain.plot(rows["batch_size"], rows[col], marker="o", ls=style, lw=1.5, color=method_color(method, i),
                      label=f"{method} / {ar if base == 'ar' else base}")
        for b, s, tau in zip(rows["batch_size"], rows["speedup_vs_ar"], rows["mean_accepted_length"]):
            gain.annotate(f"{tau:.2f}", (b, s), textcoords="offset points", xytext=(3, 4), fontsize=6)
        threads = int(requests["threads"].iloc[0]) if "threads" in requests else None
        predicted = [predicted_speedup(results, t, int(b), threads) for t, b in zip(rows["tree"], rows["batch_size"])]
        if any(p == p for p in predicted):
            gain.plot(rows["batch_size"], predicted, marker="s", mfc="none", ls=":", lw=1.2,
                      color=method_color(method, i), label=f"{method} / {ar}, predicted by the search (verify only)")
    sizes = sorted(table["batch_size"].unique())
    for ax in (tput, gain):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.minorticks_off()
        ax.set_xlabel("batch size (requests per step)")
    tput.set_ylabel("throughput (new tokens/s, whole call)")
    tput.set_ylim(bottom=0)
    tput.set_title("(a) throughput")
    tput.legend(frameon=False, fontsize=7)
    gain.axhline(1.0, color="0.5", lw=0.8)
    gain.set_ylabel("speedup (tokens/s ratio, same batch size)")
    gain.set_title("(b) Medusa's speedup; labels: tokens per step")
    gain.legend(frameon=False, fontsize=7)
    first = requests.iloc[0]
    caption(fig, f"{first.get('backbone', '?')} on {first.get('device_name', '?')}, {int(first.get('threads', 0))} threads, {first.get('dtype', '?')}; "
                 f"{requests['question_id'].nunique()} prompts x {int(first['max_new_tokens'])} new tokens; "
                 f"{load.display(folder / REQUESTS)}")
    return save(fig, out, f"batching_{folder.name}")
