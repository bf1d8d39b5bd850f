"""The bubblewrap sandbox that untrusted code runs in: the built-in agent's commands, and the setup
step and gate checks of its work.

Inside: the whole filesystem read-only, only the paths given writable; no network but a loopback
of its own; private /tmp, /run and runtime dir (so no host Unix socket such as ssh-agent or
docker.sock is reachable); credential folders of the user's home hidden; a pid namespace (nothing
outlives the command) and a user namespace without capabilities (as root, a bare bwrap keeps every
capability, and `mount -o remount,rw /` would undo the read-only root).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.util import proc
from worktree_swarm.util.redact import is_credential

# The user's home is hidden but for what tools need (toolchains, user-installed packages); tools on
# PATH anywhere in it are given back too. Credentials live in a home in too many places to list.
_HOME_TOOLS = (".rustup", ".pyenv", ".nvm", ".volta", ".sdkman", ".local/lib", ".local/bin", ".local/pipx")
# Inside what stays visible, these are hidden again, in case a tool folder holds them.
_SECRET_DIRS = (".ssh", ".aws", ".azure", ".gnupg", ".docker", ".kube", ".claude", ".config/gcloud",
                ".config/gh", ".config/anthropic", ".password-store", ".local/share/keyrings")
_SECRET_FILES = (".netrc", ".git-credentials", ".pypirc", ".npmrc", ".claude.json", ".pgpass",
                 ".config/git/credentials", ".vault-token", ".cargo/credentials.toml", ".cargo/credentials")
# In a repository's config: credentials a checkout keeps (actions/checkout's extraheader, a token in a
# remote's URL); the sandbox reads a copy without them.
_CONFIG_SECRET = re.compile(r"^\s*(extraheader|password|token|secret|credential\w*|helper)\s*=", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
# Folders made private (an empty tmpfs): host sockets and other processes' temp files live there.
_PRIVATE = ("/tmp", "/run", "/var/run", "/var/tmp", "/dev/shm")


def untrusted_env(extra: Mapping[str, str] | None = None, *, keep: Sequence[str] = ()) -> dict[str, str]:
    """The environment for code an agent wrote or could have changed: ours without credentials
    (unless named in KEEP) or git's per-call variables, plus EXTRA. A value holding a URL with a
    password in it (DATABASE_URL, HTTPS_PROXY) is a credential too, whatever its name."""
    env = {k: v for k, v in proc.clean_env().items() if k in keep or not is_credential(k, v)}
    env.update(extra or {})
    return env


@functools.cache
def available() -> bool:
    """Whether bubblewrap can build the sandbox here (it needs user namespaces)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False
    try:
        res = proc.run(bwrap, *_base_args(network=False), "--", "true", cwd=Path("/"), check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def _base_args(*, network: bool) -> list[str]:
    args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--unshare-user", "--unshare-pid", "--unshare-ipc", "--cap-drop", "ALL",
            "--new-session", "--die-with-parent"]
    return args if network else [*args, "--unshare-net"]


@dataclass(frozen=True)
class Sandbox:
    """A profile: WRITABLE folders bound read-write, READONLY paths bound read-only over them
    (a worktree's .git link), NETWORK or not."""

    writable: tuple[Path, ...]
    readonly: tuple[Path, ...] = ()
    network: bool = False
    private: Path | None = None          # a folder outside the sandbox for the copies it reads instead

    def wrap(self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> list[str]:
        """ARGV run by bwrap inside this sandbox, starting in CWD."""
        args = ["bwrap", *_base_args(network=self.network)]
        for folder in _PRIVATE:
            if os.path.isdir(folder) and not os.path.islink(folder):
                args += ["--tmpfs", folder]
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        if runtime and os.path.isdir(runtime) and not _under(Path(runtime), _PRIVATE):
            args += ["--tmpfs", runtime]
        home = _home()
        if home is not None:
            args += ["--tmpfs", str(home)]
        # Made private above, then given back read-only: the tools on PATH (a venv under /tmp),
        # the folders a cwd or a worktree's git dir lies in, and, with a network, the resolver.
        for path in self._visible(env, home):
            args += ["--ro-bind", str(path), str(path)]
        args += _hide_secrets(home)
        args += _hide_sockets()
        args += self._clean_configs()
        for path in self.writable:
            args += ["--bind", str(path), str(path)]
        for path in self.readonly:
            if os.path.lexists(path):
                args += ["--ro-bind", str(path), str(path)]
        return [*args, "--chdir", str(cwd), "--", *argv]

    def _visible(self, env: Mapping[str, str], home: Path | None) -> list[Path]:
        # wswarm's own Python (a venv's checks often run with it) and a home's toolchains.
        wanted: list[Path] = [Path(sys.prefix), Path(sys.base_prefix)]
        if home is not None:
            wanted += [home / rel for rel in _HOME_TOOLS]
        for entry in env.get("PATH", "").split(os.pathsep):
            if entry and os.path.isabs(entry):
                real = Path(os.path.realpath(entry))
                wanted.append(real)
                # A venv's or a prefix's bin/ needs its lib/ too; never a home given back whole (~/bin).
                prefix = real.parent
                if real.name == "bin" and ((prefix / "pyvenv.cfg").exists() or (prefix / "lib").is_dir()):
                    if home is None or (prefix != home and prefix.parent != home):
                        wanted.append(prefix)
        for path in self.writable:
            git_dir = _linked_git_dir(path)
            if git_dir is not None:
                # The checkout the common dir belongs to, where a project keeps its tools (.venv).
                wanted.append(git_dir.parent if git_dir.name == ".git" else git_dir)
        if self.network:
            wanted.append(Path(os.path.realpath("/etc/resolv.conf")))
        hidden = [*_PRIVATE, *([str(home)] if home is not None else [])]
        seen: list[Path] = []
        for path in sorted(set(wanted), key=lambda p: len(p.parts)):
            if _under(path, hidden) and path.exists() and not any(path.is_relative_to(s) for s in seen):
                seen.append(path)
        return seen

    def _clean_configs(self) -> list[str]:
        """The repository's config files, as the sandbox reads them: copies without credentials."""
        if self.private is None:
            return []
        args: list[str] = []
        for git_dir in filter(None, map(_linked_git_dir, self.writable)):
            for name in ("config", "config.worktree"):
                real = git_dir / name
                try:
                    text = proc.read_text(real)
                except OSError:
                    continue
                self.private.mkdir(parents=True, exist_ok=True)
                copy = self.private / f"{len(args)}-{name}"
                proc.write_new(copy, clean_config(text).encode())
                args += ["--ro-bind", str(copy), str(real)]
        return args


def _under(path: Path, tops: Sequence[str]) -> bool:
    return any(path.is_relative_to(top) for top in tops)


def _linked_git_dir(worktree: Path) -> Path | None:
    """The repository a worktree's `.git` file points at (its common dir, two levels up), so git
    can read it inside; None when there is no such link."""
    try:
        text = (worktree / ".git").read_text(encoding="utf-8") if (worktree / ".git").is_file() else ""
    except OSError:
        return None
    if not text.startswith("gitdir: "):
        return None
    target = Path(os.path.realpath(worktree / text.removeprefix("gitdir: ").strip()))
    # <common>/worktrees/<name>: the whole common dir holds the objects and refs git reads.
    return target.parent.parent if target.parent.name == "worktrees" else target


def clean_config(text: str) -> str:
    """A git config's text without the credentials a checkout may keep in it."""
    lines = [line for line in text.splitlines() if not _CONFIG_SECRET.match(line)]
    return "\n".join(_URL_USERINFO.sub(r"\1", line) for line in lines) + "\n"


def _home() -> Path | None:
    """The user's home, to be hidden: not when it is the root or a folder wswarm's sandbox needs whole."""
    home = os.environ.get("HOME")
    if not home or not os.path.isdir(home):
        return None
    real = Path(os.path.realpath(home))
    return None if real == Path("/") or _under(real, _PRIVATE) else real


def _hide_secrets(home: Path | None) -> list[str]:
    """Credential folders and files inside the parts of the home that stay visible."""
    if home is None:
        return []
    args: list[str] = []
    for rel in _SECRET_DIRS:
        path = os.path.join(home, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            args += ["--tmpfs", path]
    for rel in _SECRET_FILES:
        path = os.path.join(home, rel)
        if os.path.isfile(path) and not os.path.islink(path):
            args += ["--ro-bind", "/dev/null", path]
    return args


def _hide_sockets() -> list[str]:
    """Agent sockets named by the environment, wherever they live."""
    args: list[str] = []
    for name in ("SSH_AUTH_SOCK", "GPG_AGENT_INFO", "DOCKER_HOST"):
        value = os.environ.get(name, "").split(":", 1)[0] if name == "GPG_AGENT_INFO" else os.environ.get(name, "")
        path = value.removeprefix("unix://")
        try:
            if path and not _under(Path(path), _PRIVATE) and stat.S_ISSOCK(os.lstat(path).st_mode):
                args += ["--ro-bind", "/dev/null", path]
        except OSError:
            continue
    return args


@dataclass(frozen=True)
class Confinement:
    """How code that an agent wrote runs: always without credentials (but PASS_ENV), and inside the
    sandbox when SANDBOXED, with a HOME and TMPDIR of its own in a scratch folder."""

    sandboxed: bool = False
    network: bool = False
    pass_env: tuple[str, ...] = ()

    def prepare(self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None,
                scratch: Path) -> tuple[list[str], dict[str, str]]:
        """ARGV and its environment, ready to run in CWD; SCRATCH is made for HOME and TMPDIR."""
        full = untrusted_env(env, keep=self.pass_env)
        home, tmp = scratch / "home", scratch / "tmp"
        (tmp / "pycache").mkdir(parents=True, exist_ok=True)
        # Python never reads bytecode from the tree: a stale .pyc left there (its source's size and
        # mtime copied) would run other code than the source the gate is judging.
        full.update(PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=str(tmp / "pycache"))
        if not self.sandboxed:
            return list(argv), full
        home.mkdir(parents=True, exist_ok=True)
        full.update(HOME=str(home), TMPDIR=str(tmp), PWD=str(cwd))
        # A program named by path is not made visible for being named: only what is on PATH is.
        box = Sandbox(writable=(cwd, home, tmp), readonly=(cwd / ".git",), network=self.network,
                      private=scratch / "private")
        return box.wrap(argv, cwd=cwd, env=full), full
