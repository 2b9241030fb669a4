"""Where things live in the repository, and the shipped defaults every command starts from.

Each default is set here once: the shipped heads folder, its calibration folder, the tree folder,
the benchmark, latency and Optuna locations. Commands take these as defaults and accept any other
path (`--heads`, `--out`, ...).
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "results"
DATA = REPO_ROOT / "data"

DEFAULT_HEADS_NAME = "smollm2-135m-medusa1"
HEADS_ROOT = RESULTS / "heads"
DEFAULT_HEADS_DIR = HEADS_ROOT / DEFAULT_HEADS_NAME
CALIBRATION_ROOT = RESULTS / "calibration"
TREES_DIR = RESULTS / "trees"
DEFAULT_TREE_FILE = TREES_DIR / "default.json"
BENCH_ROOT = RESULTS / "bench"
LATENCY_DIR = RESULTS / "latency"
FIGURES_DIR = RESULTS / "figures"
OPTUNA_DB = RESULTS / "optuna.db"
CACHE_ROOT = DATA / "cache"


def calibration_dir(heads_name: str = DEFAULT_HEADS_NAME) -> Path:
    """The calibration tables of the heads called `heads_name` (a folder name under results/heads/)."""
    return CALIBRATION_ROOT / heads_name
