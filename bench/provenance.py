"""Where a measurement came from: commit, date, device, library versions, threads, dtype.

Every result row of the workbench carries these fields (see `provenance()`), so numbers from
different machines or commits are never mixed up silently. `device_slug()` names per-device files
such as `results/latency/<device>.csv`.
"""

from __future__ import annotations

import datetime as _dt
import platform
import re
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def git_commit() -> str:
    """Short commit of the working tree, with `+dirty` when it has uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@lru_cache(maxsize=4)
def device_name(device: str = "cpu") -> str:
    """Human-readable device: the GPU name, or the CPU model with its visible core count."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def device_slug(device: str = "cpu") -> str:
    """File-name-safe device name, e.g. `cpu-intel-xeon-2t` or `nvidia-h100-80gb-hbm3`."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = "cpu-" + re.sub(r"\(.*?\)|@.*|cpu|processor|\d+-core", "", device_name("cpu"), flags=re.I)
        name += f"-{torch.get_num_threads()}t"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return re.sub(r"-+", "-", slug)


def provenance(device: str = "cpu", dtype: Any = None) -> dict[str, Any]:
    """The provenance columns every result row records."""
    import transformers

    return {
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(str(device)),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else "",
    }
