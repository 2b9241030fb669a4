"""Cut the SmolLM2 GGUF into parts that each fit one device call, with a manifest to check the join.

The device tool sends at most 64 MiB per call, the tracked tree included (~33 MiB), so the 98 MB
GGUF travels in parts, one per call while the machine stays warm; `bench/gpu_model.sh` joins them
there and checks the whole file's sha256 against the manifest ``<gguf>.parts`` ("N SHA256"), so a
part left over from an older cut or a machine that went cold between calls fails with one line
instead of dequantising a wrong file. Run through ``make gpu-parts``, or::

    python -m bench.gpu_parts .gpu_model [--parts 4]
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from common.cli import Parser, run_cli
from common.errors import WorkbenchError
from common.io import atomic_write, ensure_writable
from common.paths import REPO_ROOT
from medusa.backbone import gguf_path

DEFAULT_PARTS = 4  # 3 no longer fit beside the tracked tree (32.8 MiB) once the calibrations kept their text
CALL_LIMIT = 64 * 2**20  # what one device call may carry, the working tree included


def split_file(src: Path, folder: Path, parts: int = DEFAULT_PARTS) -> list[Path]:
    """`src` as `parts` near-equal files ``folder/<name>.part0..`` plus the manifest ``<name>.parts``."""
    if parts < 1:
        raise WorkbenchError(f"--parts must be >= 1, got {parts}")
    data = src.read_bytes()
    size = -(-len(data) // parts)  # ceil: the last part is the short one
    ensure_writable(folder, "the parts folder")
    for old in folder.glob(src.name + ".part*"):  # a stale cut with more parts must not linger
        old.unlink()
    out = [atomic_write(folder / f"{src.name}.part{i}", data[i * size:(i + 1) * size]) for i in range(parts)]
    atomic_write(folder / f"{src.name}.parts", f"{parts} {hashlib.sha256(data).hexdigest()}\n")
    return out


def tracked_bytes(repo: Path) -> int | None:
    """Bytes of the files git tracks in `repo` (what every device call sends), None outside a checkout."""
    try:
        names = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum((repo / n).stat().st_size for n in names.decode().split("\0") if n and (repo / n).is_file())


def fits(part_bytes: int, tracked: int | None) -> bool:
    """Whether one call carrying the part stays within the device's limit (unknown tree: assumed so)."""
    return tracked is None or part_bytes + tracked <= CALL_LIMIT


def call_sizes(part_bytes: int, tracked: int | None) -> str:
    """One line: what a call carrying one part weighs against the device's limit."""
    if tracked is None:
        return f"largest part {part_bytes / 2**20:.1f} MiB (not in a git checkout: add the tracked tree yourself)"
    verdict = "fits" if fits(part_bytes, tracked) else "OVER: use more --parts"
    return (f"one call = tracked tree {tracked / 2**20:.1f} MiB + largest part {part_bytes / 2**20:.1f} MiB = "
            f"{(part_bytes + tracked) / 2**20:.1f} MiB of {CALL_LIMIT / 2**20:.0f} MiB: {verdict}")


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="where the parts go (.gpu_model: git-ignored, carried by the device calls)")
    p.add_argument("--parts", type=int, default=DEFAULT_PARTS, help=f"number of parts (default {DEFAULT_PARTS})")
    p.add_argument("--backbone", default="smollm2-135m", help="short name of the packaged GGUF to cut")
    args = p.parse_args(argv)
    parts = split_file(gguf_path(args.backbone), Path(args.folder), args.parts)
    for path in parts:
        print(f"{path}  {path.stat().st_size / 1e6:.1f} MB")
    largest, tracked = max(p.stat().st_size for p in parts), tracked_bytes(REPO_ROOT)
    print(call_sizes(largest, tracked))
    return 0 if fits(largest, tracked) else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
