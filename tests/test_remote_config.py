"""[distributed] in wswarm.toml: a run goes to workers without --redis; a password never sits in the file."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.conftest import Repo, wswarm, write_plan
from tests.test_remote_run import Cluster, cluster, events  # noqa: F401  (cluster is a fixture)
from worktree_swarm.config import DistributedConfig, load_config
from worktree_swarm.remote.setup import Distributed, chosen, local_agents, recorded
from worktree_swarm.util.errors import ConfigError, UsageError


def _toml(root: Path, text: str) -> None:
    (root / "wswarm.toml").write_text(text)


def test_the_section_is_read_and_checked(tmp_path: Path) -> None:
    _toml(tmp_path, '[distributed]\nredis_url = "redis://redis-host:6379/0"\nremote = "shared"\nlease = 12\n'
                    'remote_agents = 5\n')
    assert load_config(tmp_path).distributed == DistributedConfig(redis_url="redis://redis-host:6379/0",
                                                                  remote="shared", lease=12.0, remote_agents=5)
    assert not load_config(tmp_path / "nowhere").distributed.enabled
    _toml(tmp_path, '[distributed]\nredis_url = "redis://:hunter2@redis-host:6379/0"\n')
    with pytest.raises(ConfigError, match="holds a password") as refused:
        load_config(tmp_path)
    assert "hunter2" not in str(refused.value) and 'redis_url_env = "WSWARM_REDIS_URL"' in str(refused.value.hint)
    _toml(tmp_path, '[distributed]\nredis = "redis://redis-host"\n')
    with pytest.raises(ConfigError, match="unknown key distributed.redis"):
        load_config(tmp_path)
    for bad in ('redis_url = "http://redis-host"', "lease = 0.5", 'redis_url_env = "NOT A NAME"', "remote_agents = 0"):
        _toml(tmp_path, f"[distributed]\n{bad}\n")
        with pytest.raises(ConfigError):
            load_config(tmp_path)


def test_a_password_in_wswarm_toml_is_refused_before_anything_is_created(cluster: Cluster,  # noqa: F811
                                                                         tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.json", [{"id": "a", "type": "feature", "description": "a"}])
    _toml(cluster.repo.path, f'[distributed]\nredis_url = "redis://:pw@127.0.0.1:{cluster.redis.port}/0"\n')
    res = wswarm(cluster.repo.path, "start", "--plan", str(plan), "--agent-cmd", "true")
    assert res.returncode == 2 and "holds a password" in res.stderr and "hint:" in res.stderr, res.stderr
    assert ":pw@" not in res.stderr
    # Only a variable's name, and the variable unset: refused too, naming it.
    _toml(cluster.repo.path, '[distributed]\nredis_url_env = "MY_REDIS_URL"\n')
    res = wswarm(cluster.repo.path, "start", "--plan", str(plan), "--agent-cmd", "true", env={"MY_REDIS_URL": ""})
    assert res.returncode == 2 and "MY_REDIS_URL, which is not set" in res.stderr, res.stderr
    assert cluster.repo.branches("wswarm/*") == []


def test_a_run_goes_to_workers_with_only_the_section_and_its_variable(cluster: Cluster,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_text("from pathlib import Path\nPath('done.txt').write_text('done\\n')\n")
    agent = f"{sys.executable} {script}"
    plan = write_plan(tmp_path / "plan.json", [{"id": "a", "type": "feature", "description": "a"}])
    cluster.start_worker("w1", agent=agent)
    _toml(cluster.repo.path, '[distributed]\nredis_url_env = "MY_REDIS_URL"\nlease = 5\n')
    res = wswarm(cluster.repo.path, "start", "--plan", str(plan), "--agent-cmd", agent,
                 env={"MY_REDIS_URL": cluster.redis.url}, timeout=120)
    assert res.returncode == 0, res.stderr
    evs = events(cluster.repo)
    assert [e["worker"] for e in evs if e["kind"] == "attempt-assigned"] == ["w1"]
    [dist] = [e for e in evs if e["kind"] == "distributed"]
    assert dist["lease_s"] == 5
    # The run keeps where it ran (for resume): the variable's name, not only its value.
    [run] = list((cluster.repo.state_dir / "runs").iterdir())
    with sqlite3.connect(run / "state.db") as db:
        options = json.loads(db.execute("SELECT options FROM run").fetchone()[0])
    assert options["distributed"] == {"redis_url": cluster.redis.url, "password": False, "remote": "origin",
                                      "lease": 5.0, "redis_url_env": "MY_REDIS_URL", "agents": 32}


def test_the_command_line_wins_over_the_section_one_setting_at_a_time() -> None:
    section = DistributedConfig(redis_url="redis://redis-host:6379/0", remote="shared", lease=12.0, remote_agents=5)
    # --redis alone keeps the section's remote, lease and bound on workers.
    assert chosen(section, {}, redis_url="redis://other:6379/1") == Distributed(
        "redis://other:6379/1", remote="shared", lease=12.0, agents=5)
    assert chosen(section, {}, remote="mirror", lease=3.0, agents=2) == Distributed(
        "redis://redis-host:6379/0", remote="mirror", lease=3.0, agents=2)
    assert chosen(DistributedConfig(), {}) is None
    with pytest.raises(UsageError, match="^--remote and --lease are for runs on workers") as refused:
        chosen(DistributedConfig(remote="shared"), {}, remote="shared", lease=3.0)
    assert "--redis URL" in str(refused.value.hint)


def test_remote_or_lease_without_any_redis_is_refused_before_anything_is_created(repo: Repo, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.json", [{"id": "a", "type": "feature", "description": "a"}])
    for given in (["--remote", "origin"], ["--lease", "5"], ["--remote-agents", "4"]):
        res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", "true", *given)
        assert res.returncode == 2, res.stderr
        assert "for runs on workers, and this run has no Redis" in res.stderr and "Traceback" not in res.stderr
    assert not (repo.state_dir / "runs").exists() and repo.branches("wswarm/*") == []


def test_remote_and_lease_apply_to_a_run_from_the_section_alone(cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    script = tmp_path / "agent.py"
    script.write_text("from pathlib import Path\nPath('done.txt').write_text('done\\n')\n")
    agent = f"{sys.executable} {script}"
    plan = write_plan(tmp_path / "plan.json", [{"id": "a", "type": "feature", "description": "a"}])
    cluster.start_worker("w1", agent=agent)
    # origin leads nowhere: the run works only if it shares code through the remote it was given.
    cluster.repo.git("remote", "set-url", "origin", str(tmp_path / "nowhere.git"))
    cluster.repo.git("remote", "add", "shared", cluster.origin)
    _toml(cluster.repo.path, f'[distributed]\nredis_url = "{cluster.redis.url}"\n')
    res = wswarm(cluster.repo.path, "start", "--plan", str(plan), "--agent-cmd", agent, "--remote", "shared",
                 "--lease", "7")
    assert res.returncode == 0, res.stderr
    [dist] = [e for e in events(cluster.repo) if e["kind"] == "distributed"]
    assert dist["remote"] == "shared" and dist["lease_s"] == 7.0


def test_a_run_recorded_before_agents_ran_beside_workers_resumes_as_it_ran() -> None:
    kept = Distributed("redis://redis-host:6379/0", agents=5).record()
    assert kept["agents"] == 5
    # Now: --agents is the agents here, the bound on workers is the run's own.
    now = {"agents": 2, "distributed": kept}
    assert local_agents(now) == 2 and recorded(now, {}) == Distributed("redis://redis-host:6379/0", agents=5)
    # Before: the run's --agents bounded its workers, and nothing ran here.
    before = {"agents": 3, "distributed": {k: v for k, v in kept.items() if k != "agents"}}
    assert local_agents(before) == 0 and recorded(before, {}) == Distributed("redis://redis-host:6379/0", agents=3)
    assert local_agents({"agents": 4, "distributed": None}) == 4
