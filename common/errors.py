"""One error type for bad input; `common.cli.run_cli` turns it into one line and exit 2.

Every command of the workbench raises `WorkbenchError` (or a subclass) for anything the user can
fix: a missing file, a wrong shape, heads that do not match the backbone, an invalid tree, an
impossible budget. Real bugs still raise their own exceptions with a traceback.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """A problem with the user's input; its message is one line that says what to fix."""


class MissingResult(WorkbenchError):
    """An input file or folder does not exist yet; the message names the command that makes it."""


USAGE_EXIT = 2
