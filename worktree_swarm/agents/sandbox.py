"""The built-in agent's `run` tool: one argv list, never a shell string, in the worktree.

The command runs in its own process group (killed on timeout or cancel), stdin closed, with an
environment that holds no secret and a HOME of its own, inside the bubblewrap sandbox (see
worktree_swarm.sandbox). Without bubblewrap, commands are refused unless the user allowed them
to run unconfined; then only their arguments are checked, best effort.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worktree_swarm.util import proc
from worktree_swarm.agents.tools import ToolError, Workspace
from worktree_swarm.util.redact import redact_secrets
from worktree_swarm.sandbox import Confinement, available

NO_SANDBOX = ("commands cannot run: bubblewrap, which keeps them in a sandbox, is not available on this machine "
              "(install bubblewrap, or set [sandbox] required = false in wswarm.toml to run them unconfined)")

DEFAULT_TIMEOUT = 120.0
MAX_TIMEOUT = 1800.0
OUTPUT_LIMIT = 30_000        # characters of output the model sees: the head and, mostly, the tail
_DEVICES = ("/dev/null", "/dev/stdout", "/dev/stderr", "/dev/zero", "/dev/urandom")


@dataclass
class Runner:
    """Runs the model's commands for one attempt; SCRATCH (in the attempt's folder) holds their
    HOME, temp files and output."""

    workspace: Workspace
    scratch: Path
    env: Mapping[str, str] = field(default_factory=dict)
    cancel: threading.Event | None = None
    deadline: float | None = None           # time.monotonic() by which the attempt must end
    sandbox: bool | None = None              # None: bubblewrap when it works here, else see REQUIRED
    secrets: Sequence[str] = ()
    network: bool = False                    # a network inside the sandbox
    required: bool = True                    # with SANDBOX None and no bubblewrap: refuse to run commands
    _count: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.scratch = Path(os.path.realpath(self.scratch))

    @property
    def sandboxed(self) -> bool:
        return available() if self.sandbox is None else self.sandbox

    def run(self, args: dict[str, Any]) -> str:
        """Run `argv` with `timeout` seconds; a failure or a timeout is a ToolError with the output."""
        argv = self.check_argv(args.get("argv"))
        timeout = self._timeout(args.get("timeout"))
        if self.sandbox is None and self.required and not self.sandboxed:
            raise ToolError(NO_SANDBOX)
        # HOME and TMPDIR (bound into the sandbox) hold what the command writes; its output and
        # pid files lie beside them, where the command cannot plant a link or a FIFO in their place.
        home, tmp, files = self.scratch / "home", self.scratch / "tmp", self.scratch / "out"
        for folder in (home, tmp, files):
            folder.mkdir(parents=True, exist_ok=True)
        root = self.workspace.root
        extra = {**self.env, "HOME": str(home), "TMPDIR": str(tmp), "PWD": str(root)}
        full, env = Confinement(sandboxed=self.sandboxed, network=self.network).prepare(
            argv, cwd=root, env=extra, scratch=self.scratch)
        program = argv[0]
        if not ((root / program).is_file() if "/" in program else shutil.which(program, path=env.get("PATH"))):
            raise ToolError(f"{program!r} is not installed (not found on PATH)" if "/" not in program
                            else f"{program!r} does not exist")
        n = next(self._count)
        output = files / f"run-{n}.out"
        try:
            # The pidfile lies in the run's folder: `wswarm resume` stops a command we left behind.
            result = proc.run_in_group(full, cwd=root, env=env, output=output, timeout=timeout,
                                       cancel=self.cancel, pidfile=files / f"run-{n}.pid")
        except FileNotFoundError:
            raise ToolError(f"{argv[0]!r} cannot be started (not found)") from None
        except PermissionError:
            raise ToolError(f"{argv[0]!r} cannot be executed (permission denied)") from None
        except OSError as exc:
            # A link or a FIFO put where the output or pid file goes: refused, never followed.
            raise ToolError(f"cannot run: {exc.filename or 'a file'} is not a regular file wswarm can write "
                            f"({exc.strerror})") from None
        text = self._output(output)
        output.unlink(missing_ok=True)
        if result.timed_out:
            raise ToolError(f"timed out after {timeout:g}s; the command and its children were killed\n{text}")
        if result.cancelled:
            raise ToolError("interrupted: the run is stopping")
        if result.returncode != 0:
            raise ToolError(f"exit status {result.returncode}\n{text}")
        return f"exit status 0\n{text}"

    def check_argv(self, argv: object) -> list[str]:
        """ARGV as a list of words, refused when a word names a path outside the worktree.

        Best effort: it sees `/etc/passwd` and `../x` and `--out=/tmp/x`, not a path hidden inside a
        script's text; the sandbox, when there is one, is what stops those.
        """
        if not isinstance(argv, list) or not argv or not all(isinstance(w, str) for w in argv):
            raise ToolError('`argv` must be a non-empty list of strings, e.g. ["python", "-m", "pytest", "-q"]; '
                            "no shell is involved: pass each argument as its own string")
        if any("\0" in w for w in argv) or not argv[0]:
            raise ToolError("`argv` words must be non-empty and contain no NUL character")
        for i, word in enumerate(argv):
            values = [word] + ([word.split("=", 1)[1]] if "=" in word else [])
            for value in values:
                self._check_path(value, word, program=i == 0)
        return list(argv)

    def _check_path(self, value: str, word: str, *, program: bool) -> None:
        root = self.workspace.root
        if value.startswith("/"):
            # The program itself may live anywhere (/usr/bin/python3): running it is like naming it.
            if program or value in _DEVICES:
                return
            target = Path(os.path.normpath(value))
            if target.is_relative_to(root) or target.is_relative_to(self.scratch):
                return
            # `/etc/passwd` or `/tmp/new.txt` is a path; sed's `/re/d` or `/api/v1` in a grep is not
            # (nothing there, nor a folder to make it in, except at the top).
            if os.path.lexists(target) or (target.parent != Path("/") and target.parent.is_dir()):
                raise ToolError(f"argument {word!r} names a path outside the worktree; "
                                "use paths relative to the worktree root")
            return
        if ".." in Path(value).parts and not Path(os.path.normpath(root / value)).is_relative_to(root):
            raise ToolError(f"argument {word!r} leads outside the worktree with `..`")
        if value and os.path.lexists(root / value) and not Path(os.path.realpath(root / value)).is_relative_to(root):
            raise ToolError(f"argument {word!r} is a symbolic link leading outside the worktree")

    def _timeout(self, value: object) -> float:
        if value is None:
            timeout = DEFAULT_TIMEOUT
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ToolError("`timeout` must be a number of seconds greater than 0")
        else:
            timeout = min(float(value), MAX_TIMEOUT)
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 1:
                raise ToolError("no time is left for this attempt")
            timeout = min(timeout, left)
        return timeout

    def _output(self, path: Path) -> str:
        """The output's head and tail, read without loading a huge output whole."""
        head_size, tail_size = OUTPUT_LIMIT // 5, OUTPUT_LIMIT - OUTPUT_LIMIT // 5
        try:
            with os.fdopen(proc.open_regular(path, os.O_RDONLY), "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(0)
                if size <= OUTPUT_LIMIT:
                    raw = f.read()
                else:
                    head = f.read(head_size)
                    f.seek(size - tail_size)
                    raw = head + f"\n[... {size - head_size - tail_size} bytes cut ...]\n".encode() + f.read()
        except OSError:
            return ""
        return redact_secrets(raw.decode("utf-8", errors="replace"), known=self.secrets)


def describe(argv: object) -> str:
    """A run call as one readable line for the activity feed and the transcript."""
    if isinstance(argv, list) and all(isinstance(w, str) for w in argv):
        line = shlex.join(argv)
    else:
        line = repr(argv)
    return line if len(line) <= 200 else line[:200] + "…"
