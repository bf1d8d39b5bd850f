"""wswarm.toml and [tool.wswarm]: every key typed, every unknown key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from worktree_swarm.config import load_config
from worktree_swarm.util.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "wswarm.toml") -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path


def test_defaults_without_any_file(tmp_path: Path) -> None:
    cfg = load_config(tmp_path)
    assert cfg.source is None
    assert cfg.agents.concurrency == 2 and cfg.agents.max_attempts == 3 and cfg.agents.timeout == 1800
    assert cfg.gate.checks == () and cfg.gate.builtin is True


def test_full_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '''
[agents]
command = "run-agent"
concurrency = 4
timeout = 60
max_attempts = 5
default = "fast"
[agents.fast]
command = "fast-agent"
timeout = 10
[roles.frontend]
system = "You do UI."
agent = "fast"
[[gate.checks]]
name = "tests"
kind = "tests"
run = "pytest -q"
timeout = 30
[[gate.checks]]
name = "types"
kind = "types"
run = "mypy"
affected = true
glob = "*.py"
[worktree]
setup = "make deps"
setup_inputs = ["poetry.lock"]
keep_ignored = false
'''))
    assert cfg.agents.command == "run-agent" and cfg.agents.concurrency == 4 and cfg.agents.default == "fast"
    assert cfg.agents.named["fast"].command == "fast-agent" and cfg.agents.named["fast"].timeout == 10
    assert cfg.roles["frontend"].system == "You do UI." and cfg.roles["frontend"].agent == "fast"
    assert [c.name for c in cfg.gate.checks] == ["tests", "types"]
    assert cfg.gate.checks[1].affected is True and cfg.gate.checks[1].glob == "*.py"
    assert cfg.gate.checks[0].timeout == 30 and cfg.gate.checks[0].kind == "tests"
    assert cfg.worktree.setup == "make deps" and cfg.worktree.setup_inputs == ("poetry.lock",)
    assert cfg.worktree.keep_ignored is False


def test_pyproject_section(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[project]\nname = "x"\n[tool.wswarm.agents]\nconcurrency = 3\n',
                            "pyproject.toml"))
    assert cfg.agents.concurrency == 3
    assert cfg.source == tmp_path / "pyproject.toml"


def test_wswarm_toml_wins_over_pyproject(tmp_path: Path) -> None:
    write(tmp_path, "[tool.wswarm.agents]\nconcurrency = 3\n", "pyproject.toml")
    assert load_config(write(tmp_path, "[agents]\nconcurrency = 5\n")).agents.concurrency == 5


@pytest.mark.parametrize(("text", "message"), [
    ("[gate]\nchekcs = []\n", "unknown key gate.chekcs"),
    ("[agnets]\n", "unknown key agnets"),
    ("[agents]\nconcurrency = \"2\"\n", "agents.concurrency must be a whole number"),
    ("[agents]\nconcurrency = 0\n", "agents.concurrency must be at least 1"),
    ("[agents]\nconcurrency = true\n", "agents.concurrency must be a whole number"),
    ("[agents]\ntimeout = -1\n", "agents.timeout must be greater than 0"),
    ("[agents]\ndefault = \"ghost\"\n", "agents.default names agent 'ghost'"),
    ("[agents.x]\nkind = \"robot\"\n", "agents.x.kind is 'robot'"),
    ("[agents.x]\nmodel = 1\n", "agents.x.model must be a string"),
    ("[agents.x]\nflavour = 1\n", "unknown key agents.x.flavour"),
    ("[[gate.checks]]\nname = \"t\"\n", "gate.checks[0] needs both `name` and `run`"),
    ("[[gate.checks]]\nname = \"t\"\nrun = \"x\"\nkind = \"vibes\"\n", "gate.checks[0].kind is 'vibes'"),
    ("[[gate.checks]]\nname = \"t\"\nrun = \"x\"\n[[gate.checks]]\nname = \"t\"\nrun = \"y\"\n",
     "two gate checks are named 't'"),
    ("[[gate.checks]]\nname = \"t\"\nrun = \"x\"\nextra = 1\n", "unknown key gate.checks[0].extra"),
    ("[worktree]\nsetup_inputs = [1]\n", "worktree.setup_inputs must be a list of strings"),
    ("[roles.x]\nsystem = 3\n", "roles.x.system must be a string"),
    ("[scheduler]\noverlap = \"never\"\n", "scheduler.overlap is 'never'; use one of avoid, serialize, ignore"),
    ("[scheduler]\nretry_wait = 0\n", "scheduler.retry_wait must be greater than 0"),
    ("[scheduler]\nrestart_share = 1.5\n", "scheduler.restart_share must be more than 0 and at most 1"),
    ("[scheduler]\nforecasts = 1\n", "unknown key scheduler.forecasts"),
    ("[scheduler]\non_forecast = \"panic\"\n", "scheduler.on_forecast is 'panic'; use one of warn, notify, restart"),
    ("gate = 3\n", "[gate] must be a table"),
    ("not toml [", "not valid TOML"),
])
def test_rejections_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert message in info.value.message
    assert str(tmp_path / "wswarm.toml") in info.value.message


def test_pyproject_unknown_key_is_named_with_its_prefix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key tool\.wswarm\.gate\.nope"):
        load_config(write(tmp_path, "[tool.wswarm.gate]\nnope = 1\n", "pyproject.toml"))


def test_scheduler_section(tmp_path: Path) -> None:
    assert (load_config(tmp_path).scheduler.overlap, load_config(tmp_path).scheduler.retry_wait) == ("avoid", None)
    config = load_config(write(tmp_path, "[scheduler]\noverlap = \"serialize\"\nretry_wait = 90\n"))
    assert (config.scheduler.overlap, config.scheduler.retry_wait) == ("serialize", 90.0)
