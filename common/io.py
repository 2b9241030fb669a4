"""The one atomic write, and checked readers that turn a bad file into one `WorkbenchError` line.

Why atomic: a killed process (Ctrl-C, out of memory, a session ending) must never leave a
half-written result where a reader expects a whole one. `atomic_write` writes a temporary file
with a unique name in the target's folder (two writers never collide), fsyncs it, gives it the
mode an ordinary `open()` would (the umask's, not mkstemp's 0600) and renames it over the target,
so the old file stays intact until the new one is complete.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.errors import MissingResult, WorkbenchError


def _umask_bits() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _umask_mode() -> int:
    """The mode `open(path, "w")` would give a new file: 0o666 minus the process umask."""
    return 0o666 & ~_umask_bits()


def display(path: str | os.PathLike) -> str:
    """`path` relative to the working directory when it lies below it (shorter messages)."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(p)


def ensure_writable(directory: str | os.PathLike, what: str = "") -> Path:
    """Create `directory` if needed and check a file can be written there, before any long work.

    One `WorkbenchError` line ("cannot write [what ]to DIR: reason") instead of a failure after
    minutes of compute. The probe file has a unique name, so two writers never collide.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe.", delete=True):
            pass
    except OSError as e:
        raise WorkbenchError(f"cannot write {what + ' ' if what else ''}to {display(directory)}: {e.strerror}") from None
    return directory


def atomic_write(path: str | os.PathLike, content: str | bytes | Callable[[Path], Any]) -> Path:
    """Replace `path` with `content` all at once; the previous file survives any failure.

    `content` is text (written as UTF-8, newlines untouched), bytes, or a callable that writes the
    temporary path it is given (for writers that want a filename: pandas, safetensors, matplotlib).
    Returns `path`. Folders (checkpoints, caches) use `atomic_folder`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        if callable(content):
            os.close(fd)
            content(tmp)
        else:
            data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a unique temporary name, then swap it in for `path` in one rename.

    Yields the temporary folder; on success it replaces `path` (an older `path` is moved aside
    first and removed after), on failure it is deleted and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask_bits())  # mkdtemp makes 0700
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / "previous")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_csv(df: pd.DataFrame, path: str | os.PathLike, **kwargs: Any) -> Path:
    """`df.to_csv(path, index=False)` through `atomic_write`."""
    return atomic_write(path, df.to_csv(index=False, lineterminator="\n", **kwargs))


def write_npy(array: np.ndarray, path: str | os.PathLike) -> Path:
    """`np.save(path, array)` through `atomic_write` (np.save would append .npy to a temporary name)."""
    buf = io.BytesIO()
    np.save(buf, array)
    return atomic_write(path, buf.getvalue())


def write_parquet(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """`df.to_parquet(path, index=False)` through `atomic_write`."""
    return atomic_write(path, lambda p: df.to_parquet(p, index=False))


def write_json(data: Any, path: str | os.PathLike, indent: int | None = 2) -> Path:
    """JSON (sorted as given, trailing newline) through `atomic_write`."""
    return atomic_write(path, json.dumps(data, indent=indent, default=str) + "\n")


def one_of(folder: str | os.PathLike, names: Sequence[str]) -> Path:
    """The first of `names` (one table's alternative formats, e.g. parquet then CSV) present in `folder`,
    else the first name, whose reader then says in one line what is missing and what makes it."""
    folder = Path(folder)
    return next((folder / n for n in names if (folder / n).is_file()), folder / names[0])


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_json(path: str | os.PathLike, what: str = "JSON file", command: str | None = None) -> Any:
    """A JSON file, or one `WorkbenchError` line saying what is wrong with it.

    `command`, when given, is the command that makes the file: a missing file then raises
    `MissingResult` naming it.
    """
    p = Path(path)
    if not p.is_file():
        hint = f" (run `{command}` first)" if command else ""
        raise MissingResult(f"no {what} at {display(p)}{hint}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as e:
        raise WorkbenchError(f"{what} {display(p)} is not valid JSON: {_first_line(e)}") from None


def read_csv(path: str | os.PathLike, what: str = "table", required: Sequence[str] = (),
             command: str | None = None, allow_empty: bool = False, **kwargs: Any) -> pd.DataFrame:
    """A CSV (or parquet) table with the `required` columns, or one `WorkbenchError` line.

    A missing file raises `MissingResult` (naming `command` when given); unreadable bytes, a
    malformed row, missing columns and (unless `allow_empty`) an empty table raise `WorkbenchError`.
    """
    p = Path(path)
    if not p.is_file():
        hint = f" (run `{command}` first)" if command else ""
        raise MissingResult(f"no {what} at {display(p)}{hint}")
    try:
        df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p, **kwargs)
    except pd.errors.EmptyDataError:
        if allow_empty:
            return pd.DataFrame(columns=list(required))
        raise WorkbenchError(f"{what} {display(p)} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as e:
        raise WorkbenchError(f"{what} {display(p)} is not readable: {_first_line(e)}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise WorkbenchError(f"{what} {display(p)} lacks columns {missing} (has {list(df.columns)})")
    if df.empty and not allow_empty:
        raise WorkbenchError(f"{what} {display(p)} has no rows")
    return df
