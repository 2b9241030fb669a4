"""CLI helpers: the one parser base, the one comma-list parser, and `run_cli`.

Every `python -m ...` command builds its flags on `Parser` (bad usage becomes one `error:` line,
exit 2), parses lists with `comma_list`, and ends with `sys.exit(run_cli(main))`, which turns a
`WorkbenchError` into one line and exit 2, a closed output pipe (`... | head`) into a quiet exit,
and Ctrl-C into exit 130 with results already written kept. Shared flags (`--threads`, `--dtype`)
are added by the helpers below so they mean the same everywhere (README "Flags").
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from common.errors import USAGE_EXIT, WorkbenchError

T = TypeVar("T")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


class Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one `WorkbenchError` line (exit 2 through `run_cli`)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise WorkbenchError(f"{self.prog}: {message}")


def comma_list(text: str | Sequence[str] | None, convert: Callable[[str], T] = str,  # type: ignore[assignment]
               flag: str = "value") -> list[T]:
    """`"a,b,,c"` (or repeated flags, a list of such strings) -> `[convert("a"), ...]`, blanks dropped.

    A value `convert` rejects raises one `WorkbenchError` line naming `flag`.
    """
    if text is None:
        return []
    items = [text] if isinstance(text, str) else list(text)
    out: list[T] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(convert(part))
            except (TypeError, ValueError):
                raise WorkbenchError(f"{flag}: cannot read {part!r} in {item!r}") from None
    return out


def add_threads(p: argparse.ArgumentParser, default: int | None = None) -> None:
    """`--threads N`: torch CPU threads for this process (applied by `apply_threads`)."""
    p.add_argument("--threads", type=int, default=default,
                   help="torch CPU threads (default: torch's own choice; 1 gives stable timings on a shared CPU)")


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU threads: a process-wide setting, so only CLIs call this, never library code."""
    if threads is None:
        return
    if threads < 1:
        raise WorkbenchError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def add_dtype(p: argparse.ArgumentParser, default: str = "auto") -> None:
    """`--dtype`: the backbone's dtype; `auto` is float32 on a CPU and bfloat16 on CUDA."""
    p.add_argument("--dtype", default=default, choices=DTYPE_CHOICES,
                   help=f"backbone dtype: auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16 (default {default})")


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a CLI `main(argv)`; map user errors to one stderr line and exit status 2."""
    quiet_libraries()
    try:
        return int(main(argv) or 0)
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT
    except BrokenPipeError:
        # The reader (`| head`) went away: stop quietly, as a Unix filter does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted: results written so far are kept", file=sys.stderr)
        return 130


def quiet_libraries() -> None:
    """Hugging Face progress bars off, Optuna's per-trial log lines off: CLIs only (`run_cli`).

    Weight-loading progress bars would bury the one-line messages the CLIs print. Libraries not
    imported yet are not imported here (that would slow every command down): transformers reads
    the environment variable when it loads, and Optuna users call this again after importing it.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "optuna" in sys.modules:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
