"""Cut the SmolLM2 GGUF into parts that each fit one device call, with a manifest to check the join.

The device tool sends at most 64 MiB per call, the tracked tree included (~20 MB), so the 98 MB
GGUF travels in parts, one per call while the machine stays warm; `bench/gpu_model.sh` joins them
there and checks the whole file's sha256 against the manifest ``<gguf>.parts`` ("N SHA256"), so a
part left over from an older cut or a machine that went cold between calls fails with one line
instead of dequantising a wrong file. Run through ``make gpu-parts``, or::

    python -m bench.gpu_parts .gpu_model [--parts 3]
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

from common.cli import Parser, run_cli
from common.errors import WorkbenchError
from common.io import atomic_write, ensure_writable
from medusa.backbone import gguf_path

DEFAULT_PARTS = 3


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


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="where the parts go (.gpu_model: git-ignored, carried by the device calls)")
    p.add_argument("--parts", type=int, default=DEFAULT_PARTS, help=f"number of parts (default {DEFAULT_PARTS})")
    p.add_argument("--backbone", default="smollm2-135m", help="short name of the packaged GGUF to cut")
    args = p.parse_args(argv)
    for path in split_file(gguf_path(args.backbone), Path(args.folder), args.parts):
        print(f"{path}  {path.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
