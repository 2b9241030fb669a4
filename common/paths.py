"""Where things live in the repository, and the shipped defaults every command starts from.

Each default is set here once: the shipped heads folder, its calibration folder, the tree folder,
the benchmark, latency and Optuna locations. Commands take these as defaults and accept any other
path (`--heads`, `--out`, ...).

Two kinds of location. The committed reference results (``results/trees``, ``results/latency``,
``results/bench/<run>``, ``results/calibration``, ``results/figures``) are what the analysis and
the README read; a command writes there only when told to (``--out results/...``,
``trees.search --set-default``, the Makefile's reference targets behind ``make reproduce``). A
plain command writes to the scratch twin of that location under ``results/_scratch/`` (git-ignored),
so trying a command never changes a committed result and leaves ``git status`` clean.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "results"
DATA = REPO_ROOT / "data"

# ---- committed reference results (read by default; written only when named) ----------------------
DEFAULT_HEADS_NAME = "smollm2-135m-medusa1"
HEADS_ROOT = RESULTS / "heads"
DEFAULT_HEADS_DIR = HEADS_ROOT / DEFAULT_HEADS_NAME
CALIBRATION_ROOT = RESULTS / "calibration"
TREES_DIR = RESULTS / "trees"
DEFAULT_TREE_FILE = TREES_DIR / "default.json"
BENCH_ROOT = RESULTS / "bench"
REFERENCE_RUN = "mtbench-ref"  # the benchmark run the analysis reports (`make bench`); --run NAME for another
LATENCY_DIR = RESULTS / "latency"
FIGURES_DIR = RESULTS / "figures"

# ---- scratch: where plain commands write (git-ignored: results/_scratch/) ------------------------
SCRATCH = RESULTS / "_scratch"
SCRATCH_TREES = SCRATCH / "trees"  # trees.search: <name>.json
SCRATCH_LATENCY = SCRATCH / "latency"  # bench.latency: <device>.csv
SCRATCH_BENCH = SCRATCH / "bench"  # bench.run: <prompt set>/
SCRATCH_THROUGHPUT = SCRATCH / "throughput"  # bench.throughput: <prompt set>/
SCRATCH_CALIBRATION = SCRATCH / "calibration"  # bench.calibrate, bench.validate: <heads name>/
SCRATCH_FIGURES = SCRATCH / "figures"  # analysis.figures
OPTUNA_DB = SCRATCH / "optuna.db"  # trees.search --method optuna: the default study storage
CACHE_ROOT = DATA / "cache"


def calibration_dir(heads_name: str = DEFAULT_HEADS_NAME) -> Path:
    """The committed calibration tables of the heads called `heads_name` (a heads folder's name)."""
    return CALIBRATION_ROOT / heads_name


def scratch_calibration_dir(heads_name: str = DEFAULT_HEADS_NAME) -> Path:
    """Where `bench.calibrate` writes the calibration of `heads_name` unless told `--out`."""
    return SCRATCH_CALIBRATION / heads_name


def committed_or_scratch(committed: Path, scratch: Path) -> Path:
    """Where a default input is read: the committed one when it exists, else the scratch one a
    plain command wrote (e.g. the calibration of your own heads), else `committed` (whose absence
    the reader reports). The committed result always wins, so a trial in scratch never replaces it."""
    if committed.exists() or not scratch.exists():
        return committed
    return scratch
