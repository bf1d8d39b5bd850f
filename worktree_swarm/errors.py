"""Expected failures: one clear line, a hint, and a documented exit code."""

from __future__ import annotations

import errno
import os
import sqlite3
import tempfile
import time
import traceback
from pathlib import Path

EXIT_OK = 0
EXIT_TASKS_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class WswarmError(Exception):
    """An expected failure shown to the user as one line plus an optional hint."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(WswarmError):
    """Bad input: a plan, a flag, a config key. Nothing was created."""


class PlanError(UsageError):
    """The plan file is not a valid plan."""


class ConfigError(UsageError):
    """wswarm.toml or [tool.wswarm] is not valid."""


class NotARepositoryError(UsageError):
    """The command must run inside a git repository with at least one commit."""


class RunNotFoundError(UsageError):
    """No run matches what the user asked for."""


class CommandError(WswarmError):
    """A subprocess failed; carries its argv, exit code and output."""

    def __init__(self, argv: list[str], returncode: int, output: str) -> None:
        shown = " ".join(argv)
        tail = output.strip().splitlines()[-5:]
        detail = ("\n" + "\n".join(tail)) if tail else ""
        super().__init__(f"command failed (exit {returncode}): {shown}{detail}")
        self.argv = argv
        self.returncode = returncode
        self.output = output


class DiskFullError(WswarmError):
    """The disk (or a file-size limit) refused a write of the run's state. The run stops as if
    interrupted: what was written before stays valid, and `wswarm resume` continues."""

    exit_code = EXIT_INTERRUPTED


# errno values that mean "no room to write": no space, quota exceeded, file too large.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def no_room(exc: BaseException) -> bool:
    """Whether EXC is the disk refusing a write (an OSError, or SQLite saying so)."""
    if isinstance(exc, OSError):
        return exc.errno in NO_ROOM
    # SQLite reports a refused write as SQLITE_FULL, or as an I/O error when the OS said EFBIG.
    return isinstance(exc, sqlite3.OperationalError) and any(
        words in str(exc).lower() for words in ("disk is full", "disk i/o error"))


class RefMovedError(WswarmError):
    """A compare-and-swap ref update found the ref somewhere else: someone moved it."""


def crash_log() -> Path:
    """Write the traceback being handled to a file of its own and return its path (a bug's report)."""
    log = Path(tempfile.gettempdir()) / f"wswarm-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    log.write_text(traceback.format_exc(), encoding="utf-8")
    return log
