"""Where a measurement came from: the one provenance schema every result file records.

`Provenance.collect()` gives commit (with `+dirty`), UTC date, device name, torch and
transformers versions, torch threads and dtype. Bench records repeat it on every row, latency
profiles on every row, calibration, search and training records under a `"provenance"` key, so
numbers from different machines or commits are never mixed up silently. `upgrade_columns` reads
the older latency-profile column names (`device`, `torch`, `transformers`).
"""

from __future__ import annotations

import datetime as _dt
import platform
import re
import subprocess
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from common.paths import REPO_ROOT

# Column names of older files -> the current schema (read by `upgrade_columns`).
OLD_COLUMNS = {"device": "device_name", "torch": "torch_version", "transformers": "transformers_version"}


@lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD's short hash, with `+dirty` when tracked files differ; `unknown` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: str = "cpu") -> str:
    """The accelerator's name for CUDA devices, else the CPU model."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model()


def device_slug(device: str = "cpu", threads: int | None = None) -> str:
    """File-name-safe device name for per-device files, e.g. `cpu-amd-epyc-1t`, `nvidia-h100-80gb-hbm3`."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        threads = torch.get_num_threads() if threads is None else threads
        name = "cpu-" + re.sub(r"\(.*?\)|@.*|cpu|processor|\d+-core", "", cpu_model(), flags=re.I) + f"-{threads}t"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return re.sub(r"-+", "-", slug)


@dataclass(frozen=True)
class Provenance:
    """Where and with what a result was measured."""

    commit: str
    date: str
    device_name: str
    torch_version: str
    transformers_version: str
    threads: int
    dtype: str

    @classmethod
    def collect(cls, device: str = "cpu", dtype: Any = None, threads: int | None = None) -> Provenance:
        import torch
        import transformers

        return cls(
            commit=git_commit(),
            date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            device_name=device_name(str(device)),
            torch_version=torch.__version__,
            transformers_version=transformers.__version__,
            threads=torch.get_num_threads() if threads is None else int(threads),
            dtype=str(dtype).removeprefix("torch.") if dtype is not None else "",
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PROVENANCE_COLUMNS = tuple(f.name for f in fields(Provenance))


def upgrade_columns(df: Any) -> Any:
    """Rename older provenance columns of a pandas frame to the current schema (a copy)."""
    renames = {old: new for old, new in OLD_COLUMNS.items() if old in df.columns and new not in df.columns}
    return df.rename(columns=renames) if renames else df
