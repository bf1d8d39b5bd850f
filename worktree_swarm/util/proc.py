"""The one way wswarm runs a process: argv lists, explicit cwd, a clean git environment."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.util.errors import CommandError

# git exports these while hooks run; inherited, they would point our git calls at the wrong repository.
_GIT_LEAKS = ("GIT_DIR", "GIT_INDEX_FILE", "GIT_WORK_TREE", "GIT_PREFIX", "GIT_COMMON_DIR",
              "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE")


# Whatever a repository's config says (an agent may have written it), wswarm's own git calls run no
# hook (a relative core.hooksPath finds hooks inside a worktree; --no-verify skips only some), no
# fsmonitor, no signing program, no pager and no ext:: transport.
# Nor does an object mean other than its id says: refs/replace (an agent can write refs) would swap
# the content of a commit the gate judged, or of the integration head, for the train's merge; grafts
# (GIT_GRAFT_FILE below) would rewrite parents. `-c core.useReplaceRefs=false` is not enough for merge-tree.
HARDENED = ("--no-replace-objects", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
            "-c", "commit.gpgSign=false", "-c", "tag.gpgSign=false", "-c", "core.pager=cat",
            "-c", "protocol.ext.allow=never")
# A path that cannot exist: git reads no graft file, and says nothing about it.
NO_GRAFTS = {"GIT_GRAFT_FILE": "/dev/null/no-grafts"}


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without git's per-invocation variables or an outer run's
    WSWARM_* variables, never prompting."""
    # WSWARM_* of an enclosing run (wswarm started from an agent or a gate check) are not ours.
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LEAKS and not k.startswith("WSWARM_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    if extra:
        env.update(extra)
    return env


# Files in folders an agent can write are opened without following a link (one planted at the name
# would redirect our write to any file the user owns) and without blocking (a FIFO there would hang us).
_SAFE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_regular(path: Path, flags: int, mode: int = 0o600) -> int:
    """A descriptor of PATH opened with FLAGS, refused unless it is a regular file reached
    without following a symbolic link at its last component."""
    fd = os.open(path, flags | _SAFE, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_new(path: Path, data: bytes) -> None:
    """Write a new file at PATH; whatever was at that name (a stale file, a link) is removed, never
    followed."""
    path.unlink(missing_ok=True)
    with os.fdopen(open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as f:
        f.write(data)


def read_bytes(path: Path) -> bytes:
    """PATH's bytes, refused (OSError) when it is a link or not a regular file."""
    with os.fdopen(open_regular(path, os.O_RDONLY), "rb") as f:
        return f.read()


def read_text(path: Path) -> str:
    return read_bytes(path).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(
    *argv: str | Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    check: bool = True,
    input: str | None = None,
) -> Result:
    """Run argv (never through a shell) and return its output; raise CommandError on failure."""
    args = [str(a) for a in argv]
    proc = subprocess.run(
        args,
        cwd=cwd,
        env=dict(env) if env is not None else clean_env(),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
    )
    result = Result(args, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise CommandError(display_argv(args), proc.returncode, proc.stdout + proc.stderr)
    return result


def git_bytes(*args: str | Path, cwd: Path, env: Mapping[str, str] | None = None, input: bytes | None = None) -> bytes:
    """git's stdout as raw bytes (text mode would turn a lone CR into a line break); INPUT its stdin."""
    argv = ["git", *HARDENED, *(str(a) for a in args)]
    proc = subprocess.run(argv, cwd=cwd, env=clean_env({**NO_GRAFTS, **(env or {})}), input=input,
                          stdin=subprocess.DEVNULL if input is None else None, capture_output=True)
    if proc.returncode != 0:
        raise CommandError(display_argv(argv), proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace"))
    return proc.stdout


def display_argv(argv: list[str]) -> list[str]:
    """ARGV as an error message shows it: git's subcommand, not the HARDENED settings before it."""
    n = len(HARDENED)
    return [argv[0], *argv[1 + n:]] if tuple(argv[1:1 + n]) == HARDENED else argv


def git(*args: str | Path, cwd: Path, check: bool = True, env: Mapping[str, str] | None = None,
        input: str | None = None, as_configured: bool = False) -> Result:
    """Run git with a clean environment and the HARDENED settings. AS_CONFIGURED drops them, for
    the few reads that must see the configuration as the user's own git does (where hooks live)
    and run nothing."""
    return run("git", *(() if as_configured else HARDENED), *args, cwd=cwd, check=check,
               env=clean_env(env if as_configured else {**NO_GRAFTS, **(env or {})}), input=input)


@dataclass(frozen=True)
class GroupResult:
    returncode: int | None      # None when killed for a timeout or a cancel
    timed_out: bool
    cancelled: bool
    seconds: float


def run_in_group(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    output: Path,
    timeout: float,
    cancel: threading.Event | None = None,
    pidfile: Path | None = None,
    stdin: Path | int | None = None,
    stderr: Path | None = None,
    pass_fds: Sequence[int] = (),
) -> GroupResult:
    """Run argv in its own process group, stdin closed, stdout+stderr appended to OUTPUT.

    STDIN, when given, is a file fed to the process as its stdin, or the read end of a pipe (a
    descriptor, closed here once the child has it: a writer then fails when the child is gone).
    STDERR, when given, receives stderr (appended) instead of OUTPUT, for a child whose stdout is a
    machine-readable stream.
    PASS_FDS are inherited by the child (lock files it should hold for as long as it lives).

    On timeout or cancel the whole group is killed (TERM, then KILL): agents and test runners
    start children that would otherwise outlive them. PIDFILE records the group while it runs, so
    a later process can stop it if we die without doing so (see kill_orphan).
    """
    started = time.monotonic()
    with contextlib.ExitStack() as files:
        append = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        out = files.enter_context(os.fdopen(open_regular(output, append), "ab"))
        source = (stdin if isinstance(stdin, int) else subprocess.DEVNULL if stdin is None
                  else files.enter_context(os.fdopen(open_regular(stdin, os.O_RDONLY), "rb")))
        errors = (subprocess.STDOUT if stderr is None
                  else files.enter_context(os.fdopen(open_regular(stderr, append), "ab")))
        try:
            child = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=source,
                                     stdout=out, stderr=errors, start_new_session=True, pass_fds=tuple(pass_fds))
        finally:
            if isinstance(stdin, int):
                os.close(stdin)
        timed_out = cancelled = False
        try:
            if pidfile is not None:
                write_new(pidfile, f"{child.pid} {_start_time(child.pid)}\n".encode())
            while True:
                try:
                    child.wait(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() - started > timeout:
                    timed_out = True
                elif cancel is not None and cancel.is_set():
                    cancelled = True
                else:
                    continue
                _kill_group(child)
                break
        except BaseException:
            # Ctrl-C reaches us, not the child's own session: take the group down with us.
            _kill_group(child)
            raise
    if pidfile is not None:
        pidfile.unlink(missing_ok=True)
    returncode = None if (timed_out or cancelled) else child.returncode
    return GroupResult(returncode, timed_out, cancelled, time.monotonic() - started)


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot: with the pid, it names one process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return text.rsplit(")", 1)[1].split()[19]


def kill_orphan(pidfile: Path) -> bool:
    """Kill the process group a dead orchestrator left running; True when there was one.

    The pid alone could have been reused since; the start time must match too.
    """
    try:
        pid_text, started = read_text(pidfile).split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    finally:
        pidfile.unlink(missing_ok=True)
    if started == "?" or _start_time(pid) != started:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            pass
        try:
            child.wait(timeout=grace)
            # The leader is gone; take down whatever it left in its group too.
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        except subprocess.TimeoutExpired:
            continue


def remove_tree(path: Path) -> None:
    """Delete PATH and everything under it, never following a link, however deep an agent nested
    it (shutil.rmtree recurses, and a folder thousands deep is a RecursionError)."""
    if os.path.lexists(path):
        run("rm", "-rf", "--one-file-system", "--", path, cwd=Path("/"), check=False)


def shell_argv(command: str) -> list[str]:
    """argv running a user's configured command string; task text never enters it."""
    return ["/bin/sh", "-c", command]
