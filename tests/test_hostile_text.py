"""Text from plans, models and agents is untrusted: it must not forge structure in the PR body,
drive the user's terminal, crash a run half-way, or be read or redirected through a crash log.

Each attack runs for real: the command line in a subprocess on a real repository, a terminal as a
real pseudo-terminal, the model as the scripted API on 127.0.0.1."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import stat
import struct
import subprocess
import sys
import tempfile
import termios
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from conftest import WSWARM, Repo, Result, git, wswarm, write_plan
from tests.fakeapi import FakeAnthropic, tool_use
from worktree_swarm.util.errors import crash_log
from worktree_swarm.gate.report import CheckResult, GateReport
from worktree_swarm.commands.pr import render_pr
from worktree_swarm.store.run_store import AttemptRow, RunRow, TaskRow
from worktree_swarm.util.textsafe import md_cell, md_code, md_fence, md_text, terminal_text
from worktree_swarm.util.types import RunId

# What a terminal acts on: a window title (OSC 0, BEL-terminated), a cleared screen, a colour.
TITLE = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J"
RED = "\x1b[31m"
HOSTILE = f"{TITLE}{CLEAR}{RED}"
FORGED = "## Security review: APPROVED"


def markdown() -> MarkdownIt:
    """CommonMark with GitHub's tables: how the PR body will be read."""
    return MarkdownIt("commonmark").enable("table")


def plain(inline: Token) -> str:
    """The characters an inline token renders as, markup removed."""
    return "".join(child.content for child in inline.children or [] if child.type in ("text", "code_inline"))


def headings(tokens: list[Token]) -> list[str]:
    return [plain(tokens[i + 1]) for i, token in enumerate(tokens) if token.type == "heading_open"]


def table_rows(tokens: list[Token]) -> list[list[str]]:
    rows: list[list[str]] = []
    for i, token in enumerate(tokens):
        if token.type == "tr_open":
            rows.append([])
        elif token.type in ("th_open", "td_open"):
            rows[-1].append(plain(tokens[i + 1]))
    return rows


def assert_no_structure_from(tokens: list[Token]) -> None:
    """Nothing but wswarm's own <sub> footer is HTML; nothing is a link or an image."""
    def walk(ts: list[Token]) -> Iterator[Token]:
        for t in ts:
            yield t
            yield from walk(t.children or [])
    kinds = [(t.type, t.content) for t in walk(tokens)]
    assert [c for k, c in kinds if k in ("html_inline", "html_block")] == ["<sub>", "</sub>"], kinds
    assert not [k for k, _ in kinds if k in ("link_open", "image")], kinds


def on_terminal(cwd: Path, *args: str, timeout: float = 60) -> str:
    """Run the command line with stdout and stderr on a pseudo-terminal 200 columns wide; what the
    terminal received, with its CR LF line ends made plain."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([*WSWARM, *args], cwd=cwd, stdin=subprocess.DEVNULL, stdout=terminal,
                            stderr=terminal, env=env)
    os.close(terminal)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    data = os.read(controller, 65536)
                except OSError:      # EIO: the last holder of the terminal closed it
                    break
                if not data:
                    break
                chunks.append(data)
        else:
            raise AssertionError(f"wswarm {' '.join(args)} did not finish in {timeout}s")
        assert proc.wait(timeout=10) == 0, b"".join(chunks)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    return b"".join(chunks).decode("utf-8", errors="replace").replace("\r\n", "\n")


def assert_terminal_safe(shown: str) -> None:
    """No window title, no cleared screen, no bell: only the styling rich adds of its own."""
    assert "\x1b]" not in shown and "\x07" not in shown and CLEAR not in shown, repr(shown)
    assert f"{RED}HOSTILE" not in shown, repr(shown)


# --- a real run whose plan and agent are hostile ------------------------------------------------

HOSTILE_TYPE = "backend | ✅ merged | 9 | 9 | +0 −0 | <b>forged</b>"
HOSTILE_DESCRIPTION = ("Fix it <img src=x onerror=alert(1)> [click](https://evil.example) **bold** `code` "
                       "&lt; ~~gone~~ $x$ # not closing\n" + FORGED + " (second line of the description)")
AGENT = textwrap.dedent(f"""\
    import sys
    from pathlib import Path
    Path("forged.txt").write_text("x\\n")
    sys.stdout.write({HOSTILE + "HOSTILE-LOG-LINE" + chr(27) + "[0m"!r} + "\\n")
    print("done")
    print("````````")
    print({FORGED!r})
    print("<img src=x onerror=alert(1)>")
    print({TITLE + "END"!r})
""")


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Repo, Result]]:
    """One finished run of a task with a hostile type and description whose agent prints a fence
    breaker, a forged heading, HTML and terminal escapes. (Module scope: the autouse git isolation is
    per test, so this sets up its own.)"""
    root = tmp_path_factory.mktemp("hostile")
    with pytest.MonkeyPatch.context() as mp:
        home = root / "home"
        home.mkdir()
        (home / ".gitconfig").write_text("[user]\n\tname = Test User\n\temail = test@example.invalid\n")
        mp.setenv("HOME", str(home))
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        mp.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
        for var in ("GIT_DIR", "GIT_INDEX_FILE", "GIT_WORK_TREE"):
            mp.delenv(var, raising=False)
        repo = Repo(root / "repo")
        repo.path.mkdir()
        git(repo.path, "init", "-q", "-b", "main")
        repo.write("README.md", "# sample\n")
        repo.commit_all("initial")
        (root / "agent.py").write_text(AGENT)
        plan = write_plan(root / "plan.json", [{"id": "forge", "type": HOSTILE_TYPE,
                                                "description": HOSTILE_DESCRIPTION}])
        res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", f"{sys.executable} {root / 'agent.py'}")
        assert res.returncode == 0, res.stdout + res.stderr
        yield repo, res


def test_an_agent_cannot_forge_a_heading_and_a_plan_cannot_forge_cells_or_html(
        hostile_run: tuple[Repo, Result]) -> None:
    repo, res = hostile_run
    body = Path(res.stdout.strip()).read_text(encoding="utf-8")
    tokens = markdown().parse(body)

    # The summary's line of eight backticks does not close its fence: the forged heading is code.
    assert FORGED.removeprefix("## ") not in " ".join(headings(tokens))
    fences = [t.content for t in tokens if t.type == "fence"]
    assert any(FORGED in f and "<img src=x onerror=alert(1)>" in f for f in fences), body
    # The type is one cell, shown as written; the row keeps its real status.
    rows = table_rows(tokens)
    assert rows[0] == ["task", "type", "status", "attempts", "files", "lines"]
    assert rows[1][:3] == ["forge", HOSTILE_TYPE, "✅ merged"], rows
    # The description's first line is the heading's text, character for character; nothing became
    # HTML, a link, an image, emphasis or a heading of its own.
    assert f"forge — {HOSTILE_DESCRIPTION.splitlines()[0]}" in headings(tokens)
    assert_no_structure_from(tokens)
    assert not [t for t in tokens if t.type in ("strong_open", "em_open", "s_open")]
    # No terminal escape reaches the body, which `wswarm pr` also prints.
    assert "\x1b" not in body and "\x07" not in body
    shown = wswarm(repo.path, "pr")
    assert shown.returncode == 0 and "\x1b" not in shown.stdout


def test_logs_on_a_terminal_lose_control_sequences_and_a_pipe_keeps_the_bytes(
        hostile_run: tuple[Repo, Result]) -> None:
    repo, _ = hostile_run
    shown = on_terminal(repo.path, "logs", "forge")
    assert "HOSTILE-LOG-LINE" in shown
    assert "\x1b" not in shown and "\x07" not in shown, repr(shown)
    # Into a file or a pipe the log is data: byte for byte what the agent wrote.
    piped = wswarm(repo.path, "logs", "forge")
    assert f"{HOSTILE}HOSTILE-LOG-LINE" in piped.stdout


def test_pr_on_a_terminal_is_clean(hostile_run: tuple[Repo, Result]) -> None:
    repo, _ = hostile_run
    shown = on_terminal(repo.path, "pr")
    assert FORGED in shown and "\x1b" not in shown and "\x07" not in shown, repr(shown)


# --- a hostile model: tool calls and an API error carry escapes --------------------------------

def test_status_and_progress_lines_show_a_models_words_as_text(repo: Repo, fake_api: FakeAnthropic,
                                                                tmp_path: Path) -> None:
    repo.write("wswarm.toml", '[agents]\ndefault = "anthropic"\n')
    repo.commit_all("use the built-in agent")
    fake_api.on(None, tool_use("read", {"path": f"{HOSTILE}HOSTILE-ACTIVITY [bold]x[/]"}))
    fake_api.on(None, status=400, error_type="invalid_request_error",
                error_message=f"{HOSTILE}HOSTILE-REASON\nrun 12:00:00 merged everything [red]ok[/]")
    plan = write_plan(tmp_path / "plan.json", [{"id": "t", "description": "do t"}])

    res = wswarm(repo.path, "start", "--plan", str(plan), "--max-attempts", "1", timeout=120)

    assert res.returncode == 1, res.stdout + res.stderr
    events = [json.loads(line) for line in next((repo.state_dir / "runs").iterdir()).joinpath("events.jsonl")
              .read_text().splitlines()]
    assert any("HOSTILE-ACTIVITY" in str(e.get("text")) and HOSTILE in str(e.get("text")) for e in events)
    assert any("HOSTILE-REASON" in str(e.get("reason")) and HOSTILE in str(e.get("reason")) for e in events)
    # The progress lines (no terminal here) keep one line per event and no escape.
    assert "HOSTILE-REASON" in res.stderr and "\x1b" not in res.stderr and "\x07" not in res.stderr
    assert not [line for line in res.stderr.splitlines() if line.startswith("run 12:00:00")]
    # The board of `wswarm status` on a terminal: the reason shown as text, markup and all.
    shown = on_terminal(repo.path, "status")
    assert "HOSTILE-REASON" in shown and "[red]ok[/]" in shown
    assert_terminal_safe(shown)
    # `status --watch` of a run that is over draws its last frame and returns.
    watched = on_terminal(repo.path, "status", "--watch")
    assert_terminal_safe(watched)
    body = wswarm(repo.path, "pr").stdout
    assert "HOSTILE-REASON" in body and "\x1b" not in body


# --- every place of the PR body that shows someone else's words ---------------------------------

def attempt(task_id: str, n: int, outcome: str, *, reason: str | None = None, gate: str | None = None) -> AttemptRow:
    return AttemptRow(task_id=task_id, n=n, outcome=outcome, branch="x", start="s", head="h", started=0.0,
                      finished=1.0, reason=reason, gate=gate, files="[]", added=0, removed=0, cost_usd=0.0)


def test_every_untrusted_field_of_the_pr_body_stays_text() -> None:
    breaker = f"x\n```````\n{FORGED}\n~~~~\n<script>alert(1)</script>\n{TITLE}"
    plan = [{"id": "a`|b", "type": "| x |", "description": f"# h1 {TITLE}\nsecond", "dependencies": [], "files": []},
            {"id": "c", "type": "*t*", "description": "1. not a list", "dependencies": [], "files": []}]
    failing = GateReport((CheckResult("tests", "tests", "fail", 1.0, breaker, "exit 1"),))
    unverified = GateReport((CheckResult(f"[x](y) <b>{TITLE}", "tests", "not-run", 0.0, note="n"),))
    run = RunRow(id=RunId("r1"), state="finished", base="f" * 40, base_ref="main",
                 integration_branch="wswarm/r1/integration", plan=json.dumps(plan),
                 options={"title": f"goal </sub> <h1>{TITLE}", "base_branch": "ma`in"}, created=0.0, updated=0.0,
                 finished=1.0, cost_usd=0.0, merge_gate=failing.to_json())
    tasks = [TaskRow(id="a`|b", position=0, status="merged", attempts=2, branch="x", reason=None,
                     summary=breaker, merge_commit=None, worktree=None, cost_usd=0.0, updated=0.0),
             TaskRow(id="c", position=1, status="failed", attempts=1, branch="wswarm/r1/tasks/c/1`",
                     reason=f"agent said:\n{FORGED}", summary=None, merge_commit=None, worktree=None,
                     cost_usd=0.0, updated=0.0)]
    attempts = [attempt("a`|b", 1, "gate-failed", reason=f"| cell | {FORGED}"),
                attempt("a`|b", 2, "merged", gate=unverified.to_json()),
                attempt("c", 1, "agent-failed", reason="x")]
    events = [{"kind": "shared-state-changed", "agents_running": ["a`|b"], "detail": f"<b>{FORGED}</b>"}]

    body = render_pr(run, tasks, attempts, events)
    tokens = markdown().parse(body)

    heads = headings(tokens)
    assert heads[0] == "wswarm: goal </sub> <h1> (1/2 tasks)"     # the title change is gone, the rest text
    assert [h for h in heads if "Security" in h or h.startswith("h1")] == []
    assert "a`|b — # h1" in heads
    assert all(FORGED in t.content for t in tokens if t.type == "fence")
    assert len([t for t in tokens if t.type == "fence"]) == 2        # the merge gate's output and the summary
    rows = table_rows(tokens)
    assert [r[:3] for r in rows[1:]] == [["a`|b", "| x |", "✅ merged"], ["c", "*t*", "❌ failed"]]
    assert_no_structure_from(tokens)
    # Bold only where wswarm writes it (the clean-run ratio); no emphasis, no strikethrough.
    emphasis = [c.type for t in tokens for c in t.children or [] if c.type in ("strong_open", "em_open", "s_open")]
    assert emphasis == ["strong_open"]
    assert "\x1b" not in body and "\x07" not in body
    text = markdown().render(body)
    assert "based on <code>ma`in</code>" in text
    assert "<code>c</code> failed: agent said: (kept for inspection: <code>wswarm/r1/tasks/c/1`</code>)" in text
    assert "<code>a`|b</code> attempt 1: gate-failed — | cell | ## Security review: APPROVED</li>" in text
    assert "<li>while <code>a`|b</code> ran: &lt;b&gt;## Security review: APPROVED&lt;/b&gt;</li>" in text
    assert "<li><code>a`|b</code>: gate passed: [x](y) &lt;b&gt; ?</li>" in text


@pytest.mark.parametrize("text", ["```", "a ``` b", "````````", "x\n```\ny", "~~~\n```", "", "`", "\t`tab`\n"])
def test_a_fence_holds_any_backtick_run(text: str) -> None:
    tokens = markdown().parse(f"{md_fence(text)}\n\n{FORGED}\n")
    assert tokens[0].type == "fence" and tokens[0].content == text + "\n"
    assert headings(tokens) == [FORGED.removeprefix("## ")]


@pytest.mark.parametrize("text", ["plain", "a|b", "`x`", "``", "a`b``c", "\\|", "[x](y)", "<b>", "*a*", "_a_",
                                  "1. one", "- item", "+ item", "> quote", "# h", "==", "&amp;", "~~s~~", "$m$",
                                  "trailing #", "x\ny", " spaced ", "back\\slash|pipe"])
def test_inline_escapes_render_as_the_characters(text: str) -> None:
    flat = " ".join(text.split("\n")).strip()
    for cell in (md_cell(text), md_cell(text, code=True)):
        tokens = markdown().parse(f"| h |\n|---|\n| {cell} |\n")
        assert table_rows(tokens) == [["h"], [flat]], (cell, tokens)
    tokens = markdown().parse(f"### {md_text(text)}\n\n- {md_code(text)}\n")
    assert headings(tokens) == [flat]


# --- the terminal ------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "shown"), [
    (f"a{TITLE}b", "ab"),
    (f"a{CLEAR}{RED}b\x1b[0m", "ab"),
    ("a\x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\b", "alinkb"),     # a hidden hyperlink
    ("a\x1b]52;c;cHduZWQ=\x07b", "ab"),                                        # a clipboard write
    ("a\x1bcb", "ab"),                                                          # a terminal reset
    ("a\x9b2Jb\x9d0;t\x9cc", "abc"),                                            # the 8-bit forms
    ("a\x1b]0;never ends\nnext", "a\nnext"),                                    # cut at the line end
    ("keep\ttabs\nand lines\r\nCRLF", "keep\ttabs\nand lines\nCRLF"),
    ("10%\r20%", "10%\n20%"),
    ("bell\x07 back\x08space nul\x00 del\x7f", "bell backspace nul del"),
    ("\u202egnp.exe", "gnp.exe"),                                               # a right-to-left override
    ("ünïcödé ✓ 日本", "ünïcödé ✓ 日本"),
])
def test_terminal_text_keeps_words_and_drops_what_a_terminal_acts_on(raw: str, shown: str) -> None:
    assert terminal_text(raw) == shown


# --- plans: refused whole, before anything is created -------------------------------------------

def plan_rejection(repo: Repo, tmp_path: Path, task: dict[str, Any], agent_script: Any) -> Result:
    plans = tmp_path / "plans"
    plans.mkdir(exist_ok=True)
    plan = write_plan(plans / "plan.json", [task])
    refs = repo.git("for-each-ref")
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", agent_script("Path('x').write_text('x')\n"))
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and res.stdout == ""
    lines = res.stderr.splitlines()
    assert lines[0].startswith(f"wswarm: {plan}: task ") and all(x.startswith("hint: ") for x in lines[1:])
    assert len(lines) <= 2, res.stderr
    assert not repo.state_dir.exists()
    assert repo.git("for-each-ref") == refs
    assert len(repo.git("worktree", "list").splitlines()) == 1
    return res


BIG = 1024 * 1024
BAD_TEXT = [
    ("nul-in-description", {"description": "fix\0it"}, "'description' contains a NUL character at position 3"),
    ("escape-in-description", {"description": f"fix {TITLE}"}, "'description' contains the control character '\\x1b'"),
    ("huge-description", {"description": "x" * BIG}, "'description' is 1,048,576 bytes, more than the limit of 32 KiB"),
    ("huge-prompt", {"prompt": "é" * (20 * 1024)}, "'prompt' is 40,960 bytes, more than the limit of 32 KiB"),
    ("nul-in-prompt", {"prompt": "a\0"}, "'prompt' contains a NUL character"),
    ("newline-in-type", {"type": "backend\n## x"}, "'type' contains the control character '\\n'"),
    ("long-type", {"type": "t" * 201}, "'type' is 201 characters long, more than the limit of 200"),
    ("escape-in-agent", {"agent": "a\x1b[2J"}, "'agent' contains the control character '\\x1b'"),
    ("tab-in-files", {"files": ["src/*.py", "a\tb"]}, "'files' item 2 contains the control character '\\t'"),
    ("long-files-entry", {"files": ["a/" * 2100]}, "'files' item 1 is 4,200 characters long, more than"),
    ("surrogate-in-description", {"description": "a\ud800b"}, "'description' contains the lone surrogate '\\ud800'"),
    ("bell-in-command", {"command": "echo \x07"}, "'command' contains the control character '\\x07'"),
]


@pytest.mark.parametrize(("name", "fields", "expect"), BAD_TEXT, ids=[case[0] for case in BAD_TEXT])
def test_control_characters_and_oversized_text_are_refused_before_anything_is_created(
        repo: Repo, tmp_path: Path, agent_script: Any, name: str, fields: dict[str, Any], expect: str) -> None:
    res = plan_rejection(repo, tmp_path, {"id": "t", "description": "do t", **fields}, agent_script)
    assert f": task 't': {expect}" in res.stderr.splitlines()[0], res.stderr


def test_line_breaks_tabs_and_windows_line_ends_are_fine_in_a_description(
        repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    plan = write_plan(tmp_path / "plan.json", [{"id": "t", "description": "first\r\n\tsecond\nthird",
                                                "prompt": "a\r\nb"}])
    agent = agent_script("Path('got.txt').write_text(os.environ['WSWARM_TASK_DESCRIPTION'])\n")
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", agent)
    assert res.returncode == 0, res.stderr
    branch = wswarm(repo.path, "status", "--json").json()["integration_branch"]
    assert repo.show(branch, "got.txt") == "first\n\tsecond\nthird"


# --- crash logs ---------------------------------------------------------------------------------

def crash(monkeypatch: pytest.MonkeyPatch, state: Path) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    try:
        raise RuntimeError("boom: a bug")
    except RuntimeError:
        return crash_log()


def test_a_crash_log_is_private_and_never_follows_a_planted_link(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The old name was /tmp/wswarm-crash-<second>-<pid>.log: anyone could plant a link there first.
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    now = time.time()
    for second in range(-1, 5):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now + second))
        (shared / f"wswarm-crash-{stamp}-{os.getpid()}.log").symlink_to(victim)

    log = crash(monkeypatch, tmp_path / "state")

    assert victim.read_text() == "precious\n"
    assert log.parent == tmp_path / "state" / "wswarm" / "crashes"
    assert "RuntimeError: boom: a bug" in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(log.parent.parent.stat().st_mode) == 0o700
    # Two crashes in one second of one process get two files.
    assert crash(monkeypatch, tmp_path / "state") != log


def test_a_crash_folder_that_is_a_link_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir()
    (tmp_path / "state" / "wswarm").mkdir(parents=True)
    (tmp_path / "state" / "wswarm" / "crashes").symlink_to(elsewhere)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    log = crash(monkeypatch, tmp_path / "state")

    assert list(elsewhere.iterdir()) == []
    assert log.parent.parent == tmp_path and log.parent.name.startswith("wswarm-crash-")
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700 and stat.S_IMODE(log.stat().st_mode) == 0o600
    assert "boom: a bug" in log.read_text()


def test_a_crash_folder_open_to_others_is_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "state" / "wswarm" / "crashes"
    folder.mkdir(parents=True)
    folder.chmod(0o777)
    log = crash(monkeypatch, tmp_path / "state")
    assert log.parent == folder and stat.S_IMODE(folder.stat().st_mode) == 0o700
