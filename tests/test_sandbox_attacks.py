"""Attacks on the sandbox, each run for real: bubblewrap, real processes, real sockets, real git.

A command the built-in agent runs must not write outside its worktree (through a file wswarm opens
later, or by remounting the root as root), reach the network or a host socket, or read a secret;
the checks that run its code (the gate, the setup step) must not either.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import IN_CI, Repo, wswarm, write_plan
from tests.fakeapi import FakeAnthropic, text, tool_use
from worktree_swarm.agents.sandbox import NO_SANDBOX, Runner
from worktree_swarm.agents.tool_specs import call_tool
from worktree_swarm.agents.tools import Workspace
from worktree_swarm.util import proc
from worktree_swarm.sandbox import available, untrusted_env

needs_bwrap = pytest.mark.skipif(not IN_CI and not available(),
                                 reason="bubblewrap cannot make a sandbox here (scripts/install-test-tools)")


@pytest.fixture
def wt(repo: Repo, tmp_path: Path) -> Path:
    path = tmp_path / "wt"
    repo.git("worktree", "add", "-q", "-b", "task", str(path))
    return path


def run(runner: Runner, argv: list[str], timeout: float = 30) -> tuple[str, bool]:
    return call_tool("run", {"argv": argv, "timeout": timeout}, workspace=runner.workspace, runner=runner)


def sandboxed(wt: Path, **kw: Any) -> Runner:
    return Runner(Workspace(wt), wt.parent / "scratch", sandbox=True, **kw)


@needs_bwrap
def test_a_link_planted_where_wswarm_writes_the_next_output_goes_nowhere(wt: Path, repo: Repo) -> None:
    # The attack: link the next command's output file to the repository's config, then print a
    # core.fsmonitor line into it; wswarm's next git call would run the script as the user.
    config = repo.path / ".git" / "config"
    before = config.read_bytes()
    runner = sandboxed(wt)
    scratch = runner.scratch
    for target in ("out/run-2.out", "run-2.out", "out/run-3.pid"):
        text, _ = run(runner, ["sh", "-c", f"ln -sf {config} {scratch}/{target}; echo planted"])
    text, is_error = run(runner, ["sh", "-c", "printf '[core]\\n\\tfsmonitor = /tmp/evil.sh\\n'"])
    assert config.read_bytes() == before
    assert not any(p.is_symlink() for p in scratch.rglob("*"))
    assert "fsmonitor" in text and not is_error       # the command ran; its output came back to us


def test_without_the_sandbox_a_link_or_fifo_in_place_of_the_output_is_refused_not_followed(
        wt: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    runner = Runner(Workspace(wt), wt.parent / "scratch", sandbox=False)
    out = runner.scratch / "out"
    out.mkdir(parents=True)
    (out / "run-1.out").symlink_to(victim)
    text, is_error = run(runner, ["echo", "overwrite"])
    assert is_error and "run-1.out" in text and victim.read_text() == "precious\n"
    os.mkfifo(out / "run-2.out")
    text, is_error = run(runner, ["echo", "hang"], timeout=5)      # never blocks on the FIFO
    assert is_error
    (out / "run-3.pid").symlink_to(victim)
    (out / "run-3.out").unlink(missing_ok=True)
    text, is_error = run(runner, ["echo", "fine"])
    assert (text, is_error) == ("exit status 0\nfine\n", False) and victim.read_text() == "precious\n"


@needs_bwrap
def test_root_in_the_sandbox_cannot_remount_the_root_writable(wt: Path, tmp_path: Path) -> None:
    victim = tmp_path / "outside.txt"
    text, is_error = run(sandboxed(wt), ["sh", "-c", f"mount -o remount,rw / ; mount -o remount,rw /tmp; "
                                                     f"echo escaped > {victim}; cat /proc/self/status"])
    assert not victim.exists()
    cap_eff = next(line for line in text.splitlines() if line.startswith("CapEff:"))
    assert cap_eff.split()[1] == "0000000000000000"


@needs_bwrap
def test_the_sandbox_has_no_network_and_no_host_socket(wt: Path, tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    unix_path = tmp_path / "agent.sock"           # an ssh-agent or a tmux server of the user's
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(unix_path))
    unix.listen()
    accepted: list[str] = []

    def accept(sock: socket.socket) -> None:
        sock.settimeout(8)
        try:
            conn, _ = sock.accept()
            accepted.append("connected")
            conn.close()
        except OSError:
            pass

    threads = [threading.Thread(target=accept, args=(s,)) for s in (server, unix)]
    for t in threads:
        t.start()
    probe = textwrap.dedent(f"""
        import socket
        for family, address in ((socket.AF_INET, ("127.0.0.1", {port})), (socket.AF_UNIX, "{unix_path}")):
            s = socket.socket(family)
            s.settimeout(2)
            try:
                s.connect(address)
                print("REACHED", address)
            except OSError as exc:
                print("refused", type(exc).__name__)
    """)
    try:
        text, _ = run(sandboxed(wt), [sys.executable, "-c", probe])
    finally:
        for s in (server, unix):
            s.close()
        for t in threads:
            t.join()
    assert "REACHED" not in text and text.count("refused") == 2 and accepted == []


@pytest.fixture
def home_outside_tmp(tmp_path: Path) -> Any:
    """A home folder outside /tmp (which the sandbox makes private anyway), removed afterwards."""
    import shutil

    path = Path(__file__).resolve().parent.parent / ".test-homes" / tmp_path.name
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_bwrap
def test_the_home_is_hidden_but_for_its_tools(wt: Path, monkeypatch: pytest.MonkeyPatch,
                                              home_outside_tmp: Path) -> None:
    home = home_outside_tmp
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    (home / ".cargo").mkdir()
    (home / ".cargo" / "credentials.toml").write_text("token = 'hunter2'\n")
    (home / "notes.txt").write_text("diary\n")
    tool = home / ".local" / "bin" / "mytool"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\necho tool works\n")
    tool.chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{tool.parent}:{os.environ['PATH']}")
    text, _ = run(sandboxed(wt), ["sh", "-c", f"cat {home}/.ssh/id_ed25519 {home}/.cargo/credentials.toml "
                                              f"{home}/notes.txt; mytool"])
    assert "PRIVATE KEY" not in text and "hunter2" not in text and "diary" not in text
    assert "tool works" in text


def test_without_bubblewrap_commands_are_refused_unless_allowed(wt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")          # no bwrap to be found
    available.cache_clear()
    try:
        text, is_error = run(Runner(Workspace(wt), wt.parent / "scratch"), ["/bin/echo", "hi"])
        assert is_error and text == NO_SANDBOX
        text, is_error = run(Runner(Workspace(wt), wt.parent / "scratch", required=False), ["/bin/echo", "hi"])
        assert (text, is_error) == ("exit status 0\nhi\n", False)
    finally:
        available.cache_clear()


# --- the gate and the setup step run what the agent wrote: no secret, and in the sandbox -----------

SECRETS = {"ANTHROPIC_API_KEY": "sk-ant-api03-" + "k" * 40, "AWS_SECRET_ACCESS_KEY": "w" * 40,
           "AWS_ACCESS_KEY_ID": "AKIA" + "Q" * 16, "GITHUB_TOKEN": "ghp_" + "t" * 36, "PLAIN_SETTING": "kept"}


def test_the_gate_of_a_command_agents_work_never_sees_a_credential(repo: Repo, tmp_path: Path,
                                                                    agent_script: Any) -> None:
    loot = tmp_path / "loot.txt"
    repo.write("wswarm.toml", textwrap.dedent(f"""
        [gate]
        pass_env = ["GITHUB_TOKEN"]
        [[gate.checks]]
        name = "tests"
        run = "{sys.executable} -m pytest -q -p no:cacheprovider"
        [worktree]
        setup = "env > {tmp_path}/setup-env.txt"
    """))
    repo.commit_all("config")
    # The agent's conftest.py is executed by pytest in the gate: it dumps its environment.
    cmd = agent_script(f"""
        Path("conftest.py").write_text("import os\\nopen({str(loot)!r}, 'a').write(repr(dict(os.environ)))\\n")
        Path("test_ok.py").write_text("def test_ok():\\n    pass\\n")
    """)
    plan = write_plan(tmp_path / "plan.json", [{"id": "t", "type": "general", "description": "add a test",
                                                "dependencies": [], "files": []}])
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", cmd, env=SECRETS)
    assert res.returncode == 0, res.stdout + res.stderr
    dumped = loot.read_text() + (tmp_path / "setup-env.txt").read_text()
    for name in ("ANTHROPIC_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"):
        assert name not in dumped and SECRETS[name] not in dumped
    assert SECRETS["GITHUB_TOKEN"] in loot.read_text()        # listed in [gate] pass_env
    assert "PLAIN_SETTING" in dumped


@needs_bwrap
def test_the_built_in_agents_work_is_checked_inside_the_sandbox(repo: Repo, tmp_path: Path, fake_api: FakeAnthropic,
                                                                 home_outside_tmp: Path) -> None:
    victim = home_outside_tmp / "victim.txt"      # outside /tmp, which is private in the sandbox anyway
    victim.write_text("untouched\n")
    repo.write("wswarm.toml", textwrap.dedent(f"""
        [agents]
        default = "anthropic"
        [[gate.checks]]
        name = "tests"
        run = "{sys.executable} -m pytest -q -p no:cacheprovider"
    """))
    repo.commit_all("config")
    # The agent's test is run by the gate: it passes only if the write out is refused and no key is seen.
    probe = textwrap.dedent(f"""
        import os
        import pytest

        def test_no_way_out():
            with pytest.raises(OSError):
                open({str(victim)!r}, "w").write("owned by the gate\\n")
            assert not os.environ.get("ANTHROPIC_API_KEY")
    """)
    fake_api.on("plant a conftest", tool_use("write", {"path": "test_ok.py", "content": probe}))
    fake_api.on("created test_ok.py", text("Added a test."))
    plan = write_plan(tmp_path / "plan.json", [{"id": "t", "type": "general", "description": "plant a conftest",
                                                "dependencies": [], "files": []}])
    res = wswarm(repo.path, "start", "--plan", str(plan))
    assert res.returncode == 0, res.stdout + res.stderr
    assert victim.read_text() == "untouched\n"
    logs = "".join(p.read_text(errors="replace") for p in repo.state_dir.rglob("gate-tests.log"))
    assert "1 passed" in logs


def test_a_pid_file_planted_in_a_sandbox_home_never_gets_a_process_killed(repo: Repo, tmp_path: Path) -> None:
    # resume kills the process groups a dead run left behind, by the pid files it finds; a sandboxed
    # command can write into its HOME and temp folders under the run's folder, so those never count.
    import subprocess

    from conftest import alive
    from worktree_swarm.git.repo import Repo as GitRepo
    from worktree_swarm.util.proc import write_new, _start_time
    from worktree_swarm.swarm.recovery import reconcile as _reconcile
    from worktree_swarm.store.run_store import RunStore
    from worktree_swarm.util.types import RunId

    victim = subprocess.Popen(["sleep", "30"], start_new_session=True)
    orphan = subprocess.Popen(["sleep", "30"], start_new_session=True)
    store = RunStore.create(tmp_path / "run", run_id=RunId("r1"), base="b" * 40, base_ref="main",
                            integration_branch="wswarm/r1/integration", plan_json="[]", task_ids=[], options={})
    try:
        attempt = store.dir / "attempts" / "t" / "1"
        for planted in (attempt / "scratch" / "home" / "x.pid", attempt / "gate-tests.log.scratch" / "tmp" / "y.pid"):
            planted.parent.mkdir(parents=True)
            write_new(planted, f"{victim.pid} {_start_time(victim.pid)}\n".encode())
        write_new(attempt / "agent.pid", f"{orphan.pid} {_start_time(orphan.pid)}\n".encode())
        killed, _ = _reconcile(GitRepo.discover(repo.path), store, RunId("r1"))
        orphan.wait(timeout=10)
        assert killed == 1 and alive(victim.pid)
    finally:
        store.close()
        for p in (victim, orphan):
            p.kill()
            p.wait()


# --- found by a red-team review: code left in the worktree, secrets in what the sandbox can read ----

def configure_builtin(repo: Repo, checks: str = "") -> None:
    repo.write("wswarm.toml", '[agents]\ndefault = "anthropic"\n' + checks)
    repo.commit_all("config")


# Run inside the sandbox: a bytecode file for app/core.py made from the old source, with the header
# (mtime, size) of the new one. Never committed; a gate that imported it would judge other code.
PLANT_PYC = textwrap.dedent("""
    import os, py_compile, sys
    p = "app/core.py"
    new = open(p).read()
    st = os.stat(p)
    open(p, "w").write("VALUE = 1\\n")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    py_compile.compile(p, cfile="app/__pycache__/core.cpython-%d%d.pyc" % sys.version_info[:2])
    open(p, "w").write(new)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    print("planted")
""")


@needs_bwrap
def test_stale_bytecode_left_in_the_worktree_cannot_make_the_gate_pass(repo: Repo, tmp_path: Path,
                                                                       fake_api: FakeAnthropic) -> None:
    repo.write("tests/test_core.py", "from app.core import VALUE\n\ndef test_value():\n    assert VALUE == 1\n")
    configure_builtin(repo, textwrap.dedent(f"""
        [[gate.checks]]
        name = "tests"
        run = "{sys.executable} -m pytest -q -p no:cacheprovider tests"
    """))
    fake_api.on("bump the value", tool_use("write", {"path": "app/core.py", "content": "VALUE = 2\n"}))
    fake_api.on("app/core.py (10 bytes)", tool_use("run", {"argv": ["python3", "-c", PLANT_PYC]}))
    fake_api.on("planted", text("Bumped VALUE."))
    plan = write_plan(tmp_path / "plan.json", [{"id": "t", "type": "general", "description": "bump the value",
                                                "dependencies": [], "files": []}])
    res = wswarm(repo.path, "start", "--plan", str(plan), "--max-attempts", "1")
    assert res.returncode == 1, res.stdout + res.stderr
    [task] = wswarm(repo.path, "status", "--json").json()["tasks"]
    assert task["status"] == "failed" and "tests ✗" in task["reason"]
    [integration] = repo.branches("wswarm/*/integration")
    assert repo.show(integration, "app/core.py") == "VALUE = 1"


def nested_repo(marker: Path) -> str:
    """Run inside the sandbox: a repository in the worktree whose own config has a clean filter;
    a git command that looks inside it (wswarm's `git add`) would run the filter as the user."""
    return textwrap.dedent(f"""
        set -e
        export GIT_AUTHOR_NAME=a GIT_AUTHOR_EMAIL=a@b GIT_COMMITTER_NAME=a GIT_COMMITTER_EMAIL=a@b
        export GIT_AUTHOR_DATE='2001-01-01T00:00:00Z' GIT_COMMITTER_DATE='2001-01-01T00:00:00Z'
        rm -rf lib && mkdir lib && cd lib
        git init -q . && echo x > x && git add x && git commit -q -m x
        printf '#!/bin/sh\\nenv > {marker}\\ncat\\n' > .git/f.sh
        chmod +x .git/f.sh
        git config filter.ev.clean "$PWD/.git/f.sh"
        echo '* filter=ev' > .git/info/attributes
        touch -d 2001-01-01 x
        echo planted
    """)


@needs_bwrap
def test_a_repository_made_inside_the_worktree_fails_the_attempt_and_runs_nothing(
        repo: Repo, tmp_path: Path, fake_api: FakeAnthropic, home_outside_tmp: Path) -> None:
    marker = home_outside_tmp / "filter-ran.txt"       # outside /tmp, which is private in the sandbox
    configure_builtin(repo)
    fake_api.on("task first", tool_use("run", {"argv": ["sh", "-c", nested_repo(marker)]}))
    fake_api.on("planted", tool_use("write", {"path": "first.txt", "content": "hello\n"}))
    fake_api.on("first.txt (6 bytes)", text("Done."))
    fake_api.on("do not run `git init`", tool_use("write", {"path": "first.txt", "content": "hello\n"}))
    plan = write_plan(tmp_path / "plan.json", [{"id": "a", "type": "general", "description": "task first",
                                                "dependencies": [], "files": []}])
    res = wswarm(repo.path, "start", "--plan", str(plan))
    assert not marker.exists(), marker.read_text()
    run_dir = next((repo.state_dir / "runs").iterdir())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    failed = [e for e in events if e["kind"] == "agent-failed"]
    assert failed and "made a git repository inside its worktree (lib/.git)" in failed[0]["reason"]
    [integration] = repo.branches("wswarm/*/integration")
    assert "lib" not in repo.git("ls-tree", "--name-only", integration).split(), res.stdout + res.stderr


@needs_bwrap
def test_a_folder_nested_thousands_deep_is_a_tool_error_not_a_crash(repo: Repo, tmp_path: Path,
                                                                   fake_api: FakeAnthropic) -> None:
    configure_builtin(repo)
    deep = "d=.; for i in $(seq 1100); do d=$d/a; done; mkdir -p $d; echo deep"
    fake_api.on("bump the value", tool_use("run", {"argv": ["sh", "-c", deep]}))
    fake_api.on("deep", tool_use("list", {"recursive": True}))
    fake_api.on("honest work", tool_use("write", {"path": "honest.txt", "content": "ok\n"}))
    fake_api.on(None, text("Done."), times=0)
    plan = write_plan(tmp_path / "plan.json", [
        {"id": "t", "type": "general", "description": "bump the value", "dependencies": [], "files": []},
        {"id": "other", "type": "general", "description": "honest work", "dependencies": [], "files": []}])
    res = wswarm(repo.path, "start", "--plan", str(plan))
    assert "internal error" not in res.stderr, res.stderr
    tasks = {t["id"]: t for t in wswarm(repo.path, "status", "--json").json()["tasks"]}
    assert tasks["other"]["status"] == "merged"
    proc.remove_tree(repo.path)           # shutil.rmtree (pytest's clean-up) recurses too deep for it


@needs_bwrap
def test_credentials_in_the_repositorys_config_are_not_readable_in_the_sandbox(repo: Repo, wt: Path) -> None:
    # actions/checkout keeps the job's token in .git/config (persist-credentials, its default).
    token = "eC1hY2Nlc3M6Z2hzX1NFQ1JFVA=="
    repo.git("config", "http.https://github.com/.extraheader", f"AUTHORIZATION: basic {token}")
    repo.git("remote", "add", "origin", "https://someone:ghp_secretsecret@github.com/o/r.git")
    text, is_error = run(sandboxed(wt), ["git", "config", "--list"])
    assert not is_error and "remote.origin.url=https://github.com/o/r.git" in text
    assert token not in text and "ghp_secretsecret" not in text


def test_a_url_with_a_password_in_it_is_a_credential_whatever_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u:pw@db.internal/app")
    monkeypatch.setenv("HTTPS_PROXY", "http://u:pw@proxy:3128")
    monkeypatch.setenv("DOCS_URL", "https://example.invalid/docs")
    env = untrusted_env()
    assert "DATABASE_URL" not in env and "HTTPS_PROXY" not in env and env["DOCS_URL"] == "https://example.invalid/docs"


@needs_bwrap
def test_naming_a_program_by_path_does_not_make_its_private_folder_visible(wt: Path) -> None:
    other = Path("/tmp") / f"someone-elses-{os.getpid()}"
    other.mkdir()
    try:
        (other / "secret.txt").write_text("PRIVATE\n")
        (other / "tool.sh").write_text("#!/bin/sh\ncat $(dirname $0)/secret.txt\n")
        (other / "tool.sh").chmod(0o755)
        text, _ = run(sandboxed(wt), [str(other / "tool.sh")])
        assert "PRIVATE" not in text
    finally:
        proc.remove_tree(other)


def test_a_git_checkout_inside_an_ignored_folder_is_a_dependency_not_an_attack(repo: Repo, tmp_path: Path,
                                                                              agent_script: Any) -> None:
    # npm and others check git dependencies out, .git and all, into folders the repository ignores.
    repo.write(".gitignore", "node_modules/\n")
    repo.commit_all("ignore dependencies")
    cmd = agent_script("""
        import subprocess
        subprocess.run(["git", "init", "-q", "node_modules/dep"], check=True)
        Path("app/core.py").write_text("VALUE = 2\\n")
    """)
    plan = write_plan(tmp_path / "plan.json", [{"id": "t", "type": "general", "description": "d",
                                                "dependencies": [], "files": []}])
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", cmd)
    assert res.returncode == 0, res.stdout + res.stderr


# --- a second red-team round ---------------------------------------------------------------------

def nested_repo_disguised_as_submodule(marker: Path) -> str:
    """Run in the sandbox: a nested repository whose `.git` file says `gitdir:  g` (git reads " g",
    a folder in the worktree), beside a link `g` into the common dir's modules folder."""
    return textwrap.dedent(f"""
        set -e
        export GIT_AUTHOR_NAME=a GIT_AUTHOR_EMAIL=a@b GIT_COMMITTER_NAME=a GIT_COMMITTER_EMAIL=a@b
        COMMON=$(dirname $(dirname $(sed 's/^gitdir: //' .git)))
        rm -rf lib && mkdir lib && cd lib
        git init -q . && echo x > x && git add x && git commit -q -m x
        mv .git " g"
        printf 'gitdir:  g\\n' > .git
        ln -s "$COMMON/modules/g" g
        printf '#!/bin/sh\\nenv > {marker}\\ncat\\n' > " g/f.sh"; chmod +x " g/f.sh"
        git config filter.ev.clean "'$PWD/ g/f.sh'"
        echo '* filter=ev' > " g/info/attributes"
        touch -d 2001-01-01 x
        echo planted
    """)


@needs_bwrap
def test_a_nested_repository_dressed_as_a_submodule_is_still_refused(repo: Repo, tmp_path: Path,
                                                                     fake_api: FakeAnthropic) -> None:
    marker = Path("/tmp") / f"wswarm-nested-{os.getpid()}-{tmp_path.name}.env"   # only code outside can write it
    try:
        configure_builtin(repo)
        fake_api.on("task first", tool_use("run", {"argv": ["sh", "-c", nested_repo_disguised_as_submodule(marker)]}))
        fake_api.on("planted", tool_use("write", {"path": "first.txt", "content": "hello\n"}))
        fake_api.on(None, text("Done."), times=0)
        plan = write_plan(tmp_path / "plan.json", [{"id": "a", "type": "general", "description": "task first",
                                                    "dependencies": [], "files": []}])
        res = wswarm(repo.path, "start", "--plan", str(plan), "--max-attempts", "1")
        assert not marker.exists(), res.stdout + res.stderr
        [task] = wswarm(repo.path, "status", "--json").json()["tasks"]
        assert task["status"] == "failed" and "git repository inside its worktree" in task["reason"]
    finally:
        marker.unlink(missing_ok=True)


@needs_bwrap
def test_a_bin_folder_on_path_does_not_give_the_home_back(wt: Path, monkeypatch: pytest.MonkeyPatch,
                                                          home_outside_tmp: Path) -> None:
    home = home_outside_tmp
    (home / "diary.txt").write_text("secret thoughts\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{home}/bin:{home}/.local/bin:{os.environ['PATH']}")   # ~/bin need not exist
    text, _ = run(sandboxed(wt), ["sh", "-c", f"cat {home}/diary.txt; echo end"])
    assert "secret thoughts" not in text


@needs_bwrap
def test_a_file_name_that_is_not_utf8_is_listed_not_a_crash(repo: Repo, tmp_path: Path,
                                                           fake_api: FakeAnthropic) -> None:
    configure_builtin(repo)
    fake_api.on("bad name", tool_use("run", {"argv": ["python3", "-c",
                                                      "open(b'bad\\xffname.txt', 'wb').write(b'x'); print('planted')"]}))
    fake_api.on("planted", tool_use("list", {"recursive": True}))
    fake_api.on(None, text("Done."), times=0)
    plan = write_plan(tmp_path / "plan.json", [
        {"id": "t", "type": "general", "description": "bad name", "dependencies": [], "files": []}])
    res = wswarm(repo.path, "start", "--plan", str(plan), "--max-attempts", "1")
    assert "internal error" not in res.stderr, res.stderr
    assert any("name.txt" in json.dumps(m.body) for m in fake_api.messages())


def test_everyday_secret_names_never_reach_untrusted_code(monkeypatch: pytest.MonkeyPatch) -> None:
    names = ("MYSQL_PWD", "DB_PASS", "SMTP_PASS", "GITHUB_PAT", "SENTRY_DSN")
    for name in names:
        monkeypatch.setenv(name, "s3cr3t" if name != "SENTRY_DSN" else "https://abc123key@o1.ingest.sentry.io/1")
    env = untrusted_env()
    assert not set(names) & set(env) and "PATH" in env and "PWD" not in names
