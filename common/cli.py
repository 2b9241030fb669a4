"""CLI helpers: the one parser base, the one comma-list parser, and `run_cli`.

Every `python -m ...` command builds its flags on `Parser` (bad usage becomes one `error:` line,
exit 2), parses lists with `comma_list`, and ends with `sys.exit(run_cli(main))`, which turns a
`WorkbenchError` into one line and exit 2, a closed output pipe (`... | head`) into a quiet exit,
and Ctrl-C into exit 130 with results already written kept. Shared flags (`--threads`, `--dtype`)
are added by the helpers below so they mean the same everywhere (README "Flags"). Commands that
time something read `load_average()` as they start and call `warn_if_busy` once their input is
checked: one `warning:` line when other processes share the cores, since their timings would then
measure the neighbours too.
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
                   help="torch CPU threads (default: torch's own choice, all cores; 1 gives stable timings on a shared CPU)")


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU threads: a process-wide setting, so only CLIs call this, never library code."""
    if threads is None:
        return
    if threads < 1:
        raise WorkbenchError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


# Other processes may use this much of a core beyond what our threads leave free before a timing
# counts as shared: an idle machine's load average sits around 0.1-0.3.
BUSY_MARGIN = 0.5


def busy_message(loadavg: float, cpus: int | None, threads: int) -> str | None:
    """The warning when the 1-minute load average `loadavg` (other processes, as a command starts)
    leaves fewer than `threads` of the `cpus` cores free; None when the cores are free enough."""
    if not cpus or loadavg <= cpus - min(threads, cpus) + BUSY_MARGIN:
        return None
    return (f"warning: load average {loadavg:.2f} on {cpus} cores: other processes share the CPU with this "
            f"command's {threads} thread{'s' if threads != 1 else ''}, so timings are slower and noisier "
            f"(wait for an idle machine{', or use --threads 1' if threads > 1 else ''})")


def load_average() -> float | None:
    """The 1-minute load average now (None where the platform has none).

    Read it as a command starts, before the command's own work raises it: it then counts the
    neighbours only.
    """
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def warn_if_busy(loadavg: float | None = None, threads: int | None = None) -> str | None:
    """Print `busy_message` as one stderr line when the cores are shared; returns it (or None).

    `loadavg`: read earlier with `load_average()` (default: now); `threads`: torch's current count.
    Timing CLIs call this once everything is checked, so that a bad input still prints one line.
    """
    loadavg = load_average() if loadavg is None else loadavg
    if loadavg is None:
        return None
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    message = busy_message(loadavg, os.cpu_count(), threads)
    if message:
        print(message, file=sys.stderr)
    return message


def add_dtype(p: argparse.ArgumentParser, default: str = "auto") -> None:
    """`--dtype`: the backbone's dtype; `auto` is float32 on a CPU and bfloat16 on CUDA."""
    p.add_argument("--dtype", default=default, choices=DTYPE_CHOICES,
                   help=f"backbone dtype: auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16 (default {default})")


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a CLI `main(argv)`; map user errors to one stderr line and exit status 2."""
    quiet_libraries()
    try:
        code = int(main(argv) or 0)
        sys.stdout.flush()  # a closed pipe then fails here, not in the interpreter's exit-time flush
        return code
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
