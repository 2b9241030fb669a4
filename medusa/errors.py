"""One error type for bad input, and the CLI wrapper that turns it into one line and exit 2.

Every command of the workbench raises `WorkbenchError` (or a subclass) for anything the user can
fix: a missing file, a wrong shape, heads that do not match the backbone, an invalid tree, an
impossible budget. `run_cli` prints ``error: <message>`` on stderr and exits with status 2, so no
user ever sees a bare traceback for their own mistake; real bugs still raise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


class WorkbenchError(Exception):
    """A problem with the user's input; its message is one line that says what to fix."""


USAGE_EXIT = 2


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a CLI `main(argv)`; map `WorkbenchError` to one stderr line and exit status 2."""
    try:
        return int(main(argv) or 0)
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT
    except KeyboardInterrupt:
        print("interrupted: results written so far are kept", file=sys.stderr)
        return 130
