"""wswarm.toml (or [tool.wswarm] in pyproject.toml): read, checked key by key, typed."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from worktree_swarm.util.errors import ConfigError

CHECK_KINDS = ("tests", "types", "security", "lint", "custom")
AGENT_KINDS = ("command", "claude", "anthropic")
# Current models (none of them on the SDK's deprecation list); wswarm.toml and flags override.
DEFAULT_AGENT_MODEL = "claude-sonnet-5-5"
DEFAULT_PLANNER_MODEL = "claude-opus-5-5"


@dataclass(frozen=True)
class CheckConfig:
    name: str
    run: str
    kind: str = "custom"
    timeout: float = 600.0
    affected: bool = False
    glob: str | None = None


@dataclass(frozen=True)
class GateConfig:
    checks: tuple[CheckConfig, ...] = ()
    builtin: bool = True
    max_binary_bytes: int = 1_000_000
    not_installed: tuple[tuple[str, str, str], ...] = ()   # detected but missing: (name, kind, what)
    cache: bool = True          # remember results by tree: right for checks that read only the tree
    pass_env: tuple[str, ...] = ()   # secrets the checks may see (names); every other credential is removed


@dataclass(frozen=True)
class WorktreeConfig:
    setup: str | None = None
    setup_inputs: tuple[str, ...] = ()     # globs, relative to the checkout: what the setup step reads
    keep_ignored: bool = True
    slots: bool = True                      # reuse worktrees between tasks; false: a fresh one per attempt


@dataclass(frozen=True)
class AgentConfig:
    """One agent: `[agents.NAME]`, or a built-in kind used by its own name ("claude", "anthropic")."""

    name: str
    kind: str = "command"
    command: str | None = None          # kind = "command": the command line
    timeout: float | None = None
    binary: str | None = None           # kind = "claude": the CLI to run (default: claude on PATH)
    args: tuple[str, ...] = ()          # kind = "claude": extra flags, appended as separate arguments
    model: str | None = None            # kinds "claude" / "anthropic"
    max_turns: int | None = None        # kinds "claude" / "anthropic"
    max_tokens: int | None = None       # kind = "anthropic": per model reply


@dataclass(frozen=True)
class AgentsConfig:
    default: str = "command"
    command: str | None = None
    concurrency: int = 2
    timeout: float = 1800.0
    max_attempts: int = 3
    named: dict[str, AgentConfig] = field(default_factory=dict)


@dataclass(frozen=True)
class RoleConfig:
    system: str | None = None
    agent: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class PlannerConfig:
    model: str | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class LimitsConfig:
    max_cost_usd: float | None = None
    # Admission control: no new agent starts while one of these is exceeded (one always may when
    # none is running). Defaults that leave an idle machine alone and protect a busy laptop.
    max_load: float | None = 4.0                # 1-minute load average per logical CPU
    min_free_memory_mb: float | None = 1024.0   # memory available to new processes
    min_free_disk_mb: float | None = 2048.0     # on the filesystem of the git common dir
    disk_budget_mb: float | None = None         # what wswarm's folder (slots, worktrees, logs) may use


@dataclass(frozen=True)
class SandboxConfig:
    """Where the built-in agent's commands, and the setup and checks of its work, run."""

    network: bool = False       # a network inside the sandbox (default: a loopback of its own only)
    required: bool = True       # without bubblewrap, refuse to run agent-written code (false: run it unconfined)


OVERLAP_POLICIES = ("avoid", "serialize", "ignore")
FORECAST_ACTIONS = ("warn", "notify", "restart")


@dataclass(frozen=True)
class SchedulerConfig:
    overlap: str = "avoid"            # avoid | serialize | ignore: tasks whose files overlap a running task's
    retry_wait: float | None = None   # seconds a retry waits for an overlapping task to settle (default: agent timeout)
    forecast: bool = True             # snapshot running worktrees and forecast conflicts
    on_forecast: str = "notify"       # warn (an event) | notify (and the agent is told) | restart (see below)
    restart_share: float = 0.5        # restart: only an attempt that has run less than this share of its timeout


@dataclass(frozen=True)
class DistributedConfig:
    """[distributed]: every `wswarm start` here sends its attempts to workers, as with --redis."""

    redis_url: str | None = None        # without a password: a committed file holds no secret
    redis_url_env: str | None = None    # the environment variable holding the URL (with its password)
    remote: str = "origin"              # the git remote workers share code through
    lease: float = 30.0                 # seconds a worker may stay silent before its attempt is taken back
    remote_agents: int = 32             # attempts on workers at once, running or waiting for a free agent

    @property
    def enabled(self) -> bool:
        return self.redis_url is not None or self.redis_url_env is not None


@dataclass(frozen=True)
class Config:
    gate: GateConfig = GateConfig()
    worktree: WorktreeConfig = WorktreeConfig()
    agents: AgentsConfig = AgentsConfig()
    roles: dict[str, RoleConfig] = field(default_factory=dict)
    planner: PlannerConfig = PlannerConfig()
    limits: LimitsConfig = LimitsConfig()
    sandbox: SandboxConfig = SandboxConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    distributed: DistributedConfig = DistributedConfig()
    source: Path | None = None


CONFIG_FILES = ("wswarm.toml", "pyproject.toml")


def load_config(root: Path) -> Config:
    """wswarm.toml at ROOT, else [tool.wswarm] in ROOT/pyproject.toml, else the defaults."""
    return config_from(lambda name: _read_file(root / name), where=lambda name: root / name)


def config_from(read: Callable[[str], bytes | None], *, where: Callable[[str], Path]) -> Config:
    """The configuration in the files READ returns (None: no such file): wswarm.toml, else
    [tool.wswarm] in pyproject.toml, else the defaults. WHERE names a file in messages."""
    text = read("wswarm.toml")
    if text is not None:
        return parse_config(_parse_toml(text, where("wswarm.toml")), source=where("wswarm.toml"))
    text = read("pyproject.toml")
    if text is not None:
        section = _parse_toml(text, where("pyproject.toml")).get("tool", {}).get("wswarm")
        if section is not None:
            return parse_config(section, source=where("pyproject.toml"), prefix="tool.wswarm.")
    return Config()


def _read_file(path: Path) -> bytes | None:
    if not path.is_file():
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror}") from None


def _parse_toml(data: bytes, path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


class _Section:
    """Typed reads from one TOML table that remember which keys were used."""

    def __init__(self, data: object, where: str, source: Path) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: [{where.rstrip('.')}] must be a table")
        self.data: dict[str, Any] = data
        self.where = where
        self.source = source

    def _get(self, key: str, types: tuple[type, ...], what: str) -> Any:
        value = self.data.get(key)
        # bool is an int in Python; a flag given as a number (or the reverse) is still a mistake.
        if value is not None and (not isinstance(value, types) or
                                  (isinstance(value, bool) and bool not in types)):
            raise ConfigError(f"{self.source}: {self.where}{key} must be {what}, not {value!r}")
        return value

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self._get(key, (str,), "a string")
        return default if value is None else value

    def number(self, key: str, default: float | None, *, minimum: float = 0) -> float | None:
        value = self._get(key, (int, float), "a number")
        if value is not None and value <= minimum:
            raise ConfigError(f"{self.source}: {self.where}{key} must be greater than {minimum}")
        return default if value is None else float(value)

    def whole(self, key: str, default: int) -> int:
        value = self._get(key, (int,), "a whole number")
        if value is not None and value < 1:
            raise ConfigError(f"{self.source}: {self.where}{key} must be at least 1")
        return default if value is None else value

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, (bool,), "true or false")
        return default if value is None else value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self._get(key, (list,), "a list of strings") or []
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.source}: {self.where}{key} must be a list of strings")
        return tuple(value)

    def only(self, *allowed: str) -> None:
        unknown = sorted(set(self.data) - set(allowed))
        if unknown:
            raise ConfigError(f"{self.source}: unknown key{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(self.where + k for k in unknown)}",
                              hint=f"allowed in [{self.where.rstrip('.') or 'top level'}]: {', '.join(allowed)}")


def parse_config(data: dict[str, Any], *, source: Path, prefix: str = "") -> Config:
    top = _Section(data, prefix, source)
    top.only("gate", "worktree", "agents", "roles", "planner", "limits", "sandbox", "scheduler", "distributed")
    return Config(
        gate=_gate(_Section(data.get("gate", {}), f"{prefix}gate.", source)),
        worktree=_worktree(_Section(data.get("worktree", {}), f"{prefix}worktree.", source)),
        agents=_agents(_Section(data.get("agents", {}), f"{prefix}agents.", source)),
        roles={name: _role(_Section(table, f"{prefix}roles.{name}.", source))
               for name, table in _Section(data.get("roles", {}), f"{prefix}roles.", source).data.items()},
        planner=_planner(_Section(data.get("planner", {}), f"{prefix}planner.", source)),
        limits=_limits(_Section(data.get("limits", {}), f"{prefix}limits.", source)),
        sandbox=_sandbox(_Section(data.get("sandbox", {}), f"{prefix}sandbox.", source)),
        scheduler=_scheduler(_Section(data.get("scheduler", {}), f"{prefix}scheduler.", source)),
        distributed=_distributed(_Section(data.get("distributed", {}), f"{prefix}distributed.", source)),
        source=source,
    )


def _gate(s: _Section) -> GateConfig:
    s.only("checks", "builtin", "max_binary_bytes", "cache", "pass_env")
    raw = s._get("checks", (list,), "an array of tables ([[gate.checks]])") or []
    checks: list[CheckConfig] = []
    for i, table in enumerate(raw):
        c = _Section(table, f"{s.where}checks[{i}].", s.source)
        c.only("name", "kind", "run", "timeout", "affected", "glob")
        name, run = c.text("name"), c.text("run")
        if not name or not run:
            raise ConfigError(f"{s.source}: {c.where.rstrip('.')} needs both `name` and `run`")
        kind = c.text("kind", "custom") or "custom"
        if kind not in CHECK_KINDS:
            raise ConfigError(f"{s.source}: {c.where}kind is {kind!r}; use one of {', '.join(CHECK_KINDS)}")
        if name in {existing.name for existing in checks}:
            raise ConfigError(f"{s.source}: two gate checks are named {name!r}")
        checks.append(CheckConfig(name=name, run=run, kind=kind, timeout=c.number("timeout", 600.0) or 600.0,
                                  affected=c.flag("affected", False), glob=c.text("glob")))
    return GateConfig(checks=tuple(checks), builtin=s.flag("builtin", True),
                      max_binary_bytes=s.whole("max_binary_bytes", 1_000_000), cache=s.flag("cache", True),
                      pass_env=s.texts("pass_env"))


def _sandbox(s: _Section) -> SandboxConfig:
    s.only("network", "required")
    return SandboxConfig(network=s.flag("network", False), required=s.flag("required", True))


def _scheduler(s: _Section) -> SchedulerConfig:
    s.only("overlap", "retry_wait", "forecast", "on_forecast", "restart_share")
    overlap = s.text("overlap", "avoid") or "avoid"
    if overlap not in OVERLAP_POLICIES:
        raise ConfigError(f"{s.source}: {s.where}overlap is {overlap!r}; use one of {', '.join(OVERLAP_POLICIES)}")
    action = s.text("on_forecast", "notify") or "notify"
    if action not in FORECAST_ACTIONS:
        raise ConfigError(f"{s.source}: {s.where}on_forecast is {action!r}; use one of {', '.join(FORECAST_ACTIONS)}")
    share = s.number("restart_share", 0.5)
    if share is None or share > 1:
        raise ConfigError(f"{s.source}: {s.where}restart_share must be more than 0 and at most 1")
    return SchedulerConfig(overlap=overlap, retry_wait=s.number("retry_wait", None), forecast=s.flag("forecast", True),
                           on_forecast=action, restart_share=share)


def _distributed(s: _Section) -> DistributedConfig:
    s.only("redis_url", "redis_url_env", "remote", "lease", "remote_agents")
    url, env = s.text("redis_url"), s.text("redis_url_env")
    if url is not None:
        try:
            parts = urlsplit(url)
            secret = parts.password is not None
        except ValueError as exc:
            raise ConfigError(f"{s.source}: {s.where}redis_url is not a URL: {exc}") from None
        if secret:
            raise ConfigError(f"{s.source}: {s.where}redis_url holds a password, and this file may be committed",
                              hint=f'put the whole URL in an environment variable and name it: '
                                   f'redis_url_env = "WSWARM_REDIS_URL" in [{s.where.rstrip(".")}]')
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"{s.source}: {s.where}redis_url is {url!r}; give redis://HOST[:PORT][/DB] "
                              "(rediss:// for TLS)")
    if env is not None and not env.replace("_", "").isalnum():
        raise ConfigError(f"{s.source}: {s.where}redis_url_env is {env!r}; give the name of an environment "
                          "variable, such as \"WSWARM_REDIS_URL\"")
    lease = s.number("lease", 30.0) or 30.0
    if lease < 1:
        raise ConfigError(f"{s.source}: {s.where}lease must be at least 1 (seconds)")
    return DistributedConfig(redis_url=url, redis_url_env=env, remote=s.text("remote", "origin") or "origin",
                             lease=lease, remote_agents=s.whole("remote_agents", 32))


def _worktree(s: _Section) -> WorktreeConfig:
    s.only("setup", "setup_inputs", "keep_ignored", "slots")
    inputs = s.texts("setup_inputs")
    for pattern in inputs:
        if not pattern or pattern.startswith("/") or ".." in Path(pattern).parts:
            raise ConfigError(f"{s.source}: {s.where}setup_inputs has {pattern!r}; give paths or globs inside "
                              "the checkout, such as \"package-lock.json\" or \"requirements/*.txt\"")
    return WorktreeConfig(setup=s.text("setup"), setup_inputs=inputs, keep_ignored=s.flag("keep_ignored", True),
                          slots=s.flag("slots", True))


def _agents(s: _Section) -> AgentsConfig:
    scalars = ("default", "command", "concurrency", "timeout", "max_attempts")
    named: dict[str, AgentConfig] = {}
    for key, value in s.data.items():
        if key in scalars:
            continue
        if not isinstance(value, dict):
            s.only(*scalars)  # raises: an unknown scalar key
        a = _Section(value, f"{s.where}{key}.", s.source)
        a.only("kind", "command", "timeout", "binary", "args", "model", "max_turns", "max_tokens")
        kind = a.text("kind", key if key in AGENT_KINDS else "command") or "command"
        if kind not in AGENT_KINDS:
            raise ConfigError(f"{s.source}: {a.where}kind is {kind!r}; this version runs: {', '.join(AGENT_KINDS)}")
        max_turns, max_tokens = a.whole("max_turns", 0), a.whole("max_tokens", 0)
        named[key] = AgentConfig(name=key, kind=kind, command=a.text("command"), timeout=a.number("timeout", None),
                                 binary=a.text("binary"), args=a.texts("args"), model=a.text("model"),
                                 max_turns=max_turns or None, max_tokens=max_tokens or None)
    default = s.text("default", "command") or "command"
    if default not in AGENT_KINDS and default not in named:
        raise ConfigError(f"{s.source}: {s.where}default names agent {default!r}, which is not configured",
                          hint=f"define it as [{s.where}{default}] or use one of {', '.join(AGENT_KINDS)}")
    return AgentsConfig(default=default, command=s.text("command"), concurrency=s.whole("concurrency", 2),
                        timeout=s.number("timeout", 1800.0) or 1800.0, max_attempts=s.whole("max_attempts", 3),
                        named=named)


def _role(s: _Section) -> RoleConfig:
    s.only("system", "agent", "model")
    return RoleConfig(system=s.text("system"), agent=s.text("agent"), model=s.text("model"))


def _planner(s: _Section) -> PlannerConfig:
    s.only("model", "max_tokens")
    return PlannerConfig(model=s.text("model"), max_tokens=s.whole("max_tokens", 0) or None)


def _limits(s: _Section) -> LimitsConfig:
    s.only("max_cost_usd", "max_load", "min_free_memory_mb", "min_free_disk_mb", "disk_budget_mb")
    floors = {}
    for key in ("min_free_memory_mb", "min_free_disk_mb"):
        value = s._get(key, (int, float), "a number of megabytes")
        if value is not None and value < 0:
            raise ConfigError(f"{s.source}: {s.where}{key} must be 0 (no minimum) or more")
        floors[key] = float(value) if value is not None else getattr(LimitsConfig, key)
    return LimitsConfig(max_cost_usd=s.number("max_cost_usd", None), max_load=s.number("max_load", 4.0),
                        disk_budget_mb=s.number("disk_budget_mb", None), **floors)
