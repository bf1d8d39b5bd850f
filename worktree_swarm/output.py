"""What the command line writes, and how an error ends a command.

Data (JSON, a log, a PR body) goes to stdout as it is; messages go to stderr. An expected error is
one line, a hint and its exit code; a bug keeps its traceback in a private crash log. `cli.py` and
the read-only commands `__main__` answers without loading typer both go through here, so the two
paths print the same bytes and exit with the same codes. rich is loaded only when a console is made.
"""

from __future__ import annotations

import os
import sys
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from worktree_swarm.util.textsafe import SafeConsole

EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
_STDERR: SafeConsole | None = None


def console(*, stderr: bool = False, soft_wrap: bool = True) -> SafeConsole:
    """A console whose reader may go away (`wswarm start | head -2`): the run is not stopped for it.
    Once the reader is gone the console is `quiet`, and whoever writes only for that reader (a
    watcher) can stop. Much of what it shows was written by a model or an agent: never markup, never
    a control sequence."""
    from worktree_swarm.util.textsafe import SafeConsole

    class _Console(SafeConsole):
        def on_broken_pipe(self) -> None:
            # rich's own exits the process with 1 (and points fd 1 at /dev/null whichever stream broke).
            self.quiet = True
            to_devnull(self.file)

    return _Console(stderr=stderr, highlight=False, soft_wrap=soft_wrap, markup=False, emoji=False)


def stderr_console() -> SafeConsole:
    """The one stderr console, made on first use."""
    global _STDERR
    if _STDERR is None:
        _STDERR = console(stderr=True)
    return _STDERR


def to_devnull(stream: IO[str]) -> None:
    """Send what STREAM still gets (and what its buffer holds) to /dev/null: the reader is gone,
    and Python's own flush at exit must not fail the command either."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def emit(text: str) -> None:
    """Data (a PR body, a log, JSON) goes to stdout as it is: no markup, emoji codes or tab expansion."""
    write(text if text.endswith("\n") else text + "\n")


def write(text: str) -> None:
    """TEXT to stdout: byte for byte into a file or a pipe; on a terminal without the control sequences
    an agent's output may carry (a title change, a cleared screen, a rewritten line)."""
    try:
        if sys.stdout.isatty():
            from worktree_swarm.util.textsafe import terminal_text
            text = terminal_text(text)
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        to_devnull(sys.stdout)


def notify(message: str) -> None:
    """A message for the person at the terminal, on stderr."""
    stderr_console().print(message, markup=False)


def failed(exc: BaseException) -> int:
    """Show the error being handled and return the command's exit code: an expected error is its
    message, its hint and its own code; Ctrl-C is 130; anything else is a bug, its traceback kept
    in a crash log. Call it inside the `except` block, where the traceback is still at hand."""
    from worktree_swarm.util.errors import WswarmError, crash_log

    err = stderr_console()
    if isinstance(exc, WswarmError):
        err.print(f"wswarm: {exc.message}", markup=False)
        if exc.hint:
            err.print(f"hint: {exc.hint}", markup=False)
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        err.print("wswarm: interrupted")
        return EXIT_INTERRUPTED
    log = crash_log()
    err.print(f"wswarm: internal error: {type(exc).__name__}: {exc}", markup=False)
    err.print(f"hint: the traceback is in {log}; please report it", markup=False)
    return EXIT_INTERNAL
