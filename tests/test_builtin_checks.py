"""The built-in diff checks, on diffs produced by real git in a temporary repository.

Every fake secret below is assembled at run time, so this file holds no literal the secret
patterns would match: wswarm's own gate may scan this repository.
"""

from __future__ import annotations

import os
import string
import subprocess
from pathlib import Path

import pytest

from worktree_swarm.gate.builtin import CHECK_NAMES, Finding, scan_diff

_GIT_LEAKS = ("GIT_DIR", "GIT_INDEX_FILE", "GIT_WORK_TREE", "GIT_COMMON_DIR", "GIT_PREFIX")
_DATE = "2024-01-01T00:00:00+0000"


class Repo:
    """A throwaway repository: a base commit, then changes committed on top."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.git("init", "-q", "-b", "main")
        for key, value in [("user.name", "Test"), ("user.email", "test@example.com"),
                           ("core.autocrlf", "false"), ("core.quotePath", "true"),
                           ("diff.noprefix", "false"), ("diff.mnemonicPrefix", "false")]:
            self.git("config", key, value)
        self.write("README.md", "# demo\n")
        self.base = self.commit("base")

    def git(self, *args: str) -> bytes:
        env = {k: v for k, v in os.environ.items() if k not in _GIT_LEAKS}
        env.update(GIT_AUTHOR_DATE=_DATE, GIT_COMMITTER_DATE=_DATE, GIT_CONFIG_NOSYSTEM="1",
                   GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0")
        return subprocess.run(["git", *args], cwd=self.root, env=env, check=True,
                              capture_output=True).stdout

    def write(self, path: str, content: str | bytes) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()  # bytes: keep "\r\n" exactly as written
        target.write_bytes(content)

    def mv(self, old: str, new: str) -> None:
        (self.root / new).parent.mkdir(parents=True, exist_ok=True)
        self.git("mv", old, new)

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD").decode().strip()

    def diff(self) -> str:
        """The branch's diff as the gate takes it, bytes decoded without newline translation."""
        head = self.commit("head")
        out = self.git("diff", "--no-color", "--no-ext-diff", "-M", self.base, head)
        return out.decode("utf-8", "surrogateescape")

    def scan(self, declared: tuple[str, ...] = (), max_binary_bytes: int = 1_000_000,
             ) -> list[Finding]:
        text = self.diff()

        def blob_size(path: str) -> int | None:
            file = self.root / path
            return file.stat().st_size if file.exists() else None

        findings = scan_diff(text, declared_files=declared, blob_size=blob_size,
                             max_binary_bytes=max_binary_bytes)
        for f in findings:
            assert f.check in CHECK_NAMES and "\n" not in f.message and "\r" not in f.message
        return findings


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


def of(findings: list[Finding], check: str) -> list[Finding]:
    return [f for f in findings if f.check == check]


def fake(n: int, alphabet: str = string.ascii_letters + string.digits, seed: int = 7) -> str:
    """A deterministic, realistic-looking mix of characters (no run of one character)."""
    return "".join(alphabet[(i * seed + i * i + 3) % len(alphabet)] for i in range(n))


UPPER_DIGITS = string.ascii_uppercase + string.digits
ALNUM = string.ascii_letters + string.digits


def pem(kind: str) -> str:
    return "-----BEGIN " + kind + "PRIVATE KEY" + "-----"


# (kind named in the message, text around the secret, the secret that must not leak)
SECRETS: list[tuple[str, str, str]] = [
    ("PEM private key", "{}", pem("RSA ")),
    ("PEM private key", "{}", pem("EC ")),
    ("PEM private key", "{}", pem("OPENSSH ")),
    ("PEM private key", "{}", pem("DSA ")),
    ("PEM private key", "{}", pem("")),
    ("PEM private key", "{}", "-----BEGIN PGP " + "PRIVATE KEY BLOCK-----"),
    ("AWS access key id", "key_id = {}", "AKIA" + fake(16, UPPER_DIGITS)),
    ("AWS access key id", "id: {}", "ASIA" + fake(16, UPPER_DIGITS, 5)),
    ("AWS secret access key", "aws_secret_access_key = {}", fake(40, ALNUM + "/+", 11)),
    ("AWS secret access key", 'AWS_SECRET_ACCESS_KEY="{}"', fake(40, ALNUM + "/+", 13)),
    *[("GitHub token", 'token = "{}"', prefix + "_" + fake(36))
      for prefix in ("ghp", "gho", "ghu", "ghs", "ghr")],
    ("GitHub token", "GH={}", "github_pat_" + fake(82, ALNUM + "_")),
    ("Anthropic API key", "ANTHROPIC_API_KEY={}", "sk-ant-" + "api03-" + fake(93, ALNUM + "_-")),
    ("OpenAI API key", "openai.api_key = '{}'", "sk-" + fake(48)),
    ("OpenAI API key", "OPENAI_API_KEY={}", "sk-proj-" + fake(120, ALNUM + "_-", 3)),
    ("Slack token", "SLACK={}", "xoxb-" + "2875109346-" + "4518290366214-" + fake(24)),
    ("Slack token", "hook: {}", "xoxp-" + "1234098765-" + fake(30, ALNUM, 9)),
    ("Google API key", 'maps_key: "{}"', "AIza" + fake(35, ALNUM + "_-")),
    ("Stripe live key", "stripe.api_key = {}", "sk_live_" + fake(24)),
    ("Stripe live key", "STRIPE={}", "rk_live_" + fake(30, ALNUM, 3)),
]


@pytest.mark.parametrize(("kind", "template", "secret"), SECRETS,
                         ids=[f"{kind}-{i}" for i, (kind, _, _) in enumerate(SECRETS)])
def test_each_secret_kind_is_caught_without_leaking_it(
        repo: Repo, kind: str, template: str, secret: str) -> None:
    repo.write("conf/settings.py", "import os\n\n" + template.format(secret) + "\n")
    [finding] = repo.scan()
    assert (finding.check, finding.path, finding.line, finding.severity) == (
        "secrets", "conf/settings.py", 3, "fail")
    assert kind in finding.message and finding.message.endswith(secret[:4] + "…")
    assert secret[4:] not in finding.message  # at most the first four characters survive


@pytest.mark.parametrize("line", [
    "aws_access_key_id = " + "AKIA" + "IOSFODNN7" + "EXAMPLE",  # AWS's documentation key
    "token = " + "ghp_" + "x" * 36,
    "token = " + "ghp_" + "0" * 36,
    "token = " + "ghp_" + "ab12" + "XXXX" + fake(28),
    "key = " + "AIza" + "X" * 35,
    "key = " + "sk-ant-" + "api03-" + "xxxx" + fake(30),
    "key = " + "sk-ant-" + "<your-key-here>",
    "key = " + "sk-" + "${OPENAI_API_KEY}",
    "key = " + "sk-proj-" + fake(10) + "example" + fake(20),
    "stripe = " + "sk_live_" + "1" * 24,
    "aws_secret_access_key = " + "EXAMPLE" + fake(33),
    "plain words: sk-learn, AKIA-less, ghp, xoxb",
])
def test_placeholders_are_not_secrets(repo: Repo, line: str) -> None:
    repo.write("docs/setup.md", "Configure:\n\n    " + line + "\n")
    assert repo.scan() == []


def test_one_token_is_reported_once_and_every_token_on_a_line(repo: Repo) -> None:
    anthropic = "sk-ant-" + fake(40, ALNUM + "_-")  # also looks like an OpenAI key
    github = "ghp_" + fake(36, ALNUM, 5)
    repo.write("env.sh", f"export A={anthropic} B={github}\n")
    findings = repo.scan()
    assert [f.message.split(":")[0] for f in findings] == [
        "possible Anthropic API key", "possible GitHub token"]


def test_only_added_lines_are_scanned_and_deleted_files_are_not(repo: Repo) -> None:
    token = "ghp_" + fake(36)
    repo.write("leaky.env", f"TOKEN={token}\n")
    repo.write("kept.env", f"TOKEN={token}\nA=1\n")
    repo.base = repo.commit("secrets already on the base")
    (repo.root / "leaky.env").unlink()
    repo.write("kept.env", f"TOKEN={token}\nA=2\n")  # the token is only context now
    assert repo.scan() == []


def test_secret_on_crlf_line_without_final_newline(repo: Repo) -> None:
    token = "xoxa-" + "99887766-" + fake(20)
    repo.write("win.ini", "[slack]\r\nkey=" + token)
    [finding] = repo.scan()
    assert (finding.path, finding.line) == ("win.ini", 2)
    assert token not in finding.message and finding.message.endswith("xoxa…")


def test_conflict_markers_are_caught(repo: Repo) -> None:
    repo.write("app.py", "a = 1\n<<<<<<< HEAD\nb = 2\n||||||| base\nb = 0\n=======\nb = 3\n"
                         ">>>>>>> feature\n")
    findings = repo.scan()
    assert [(f.check, f.line, f.severity) for f in findings] == [
        ("conflict-markers", n, "fail") for n in (2, 4, 6, 8)]


def test_bare_markers_and_crlf_count(repo: Repo) -> None:
    repo.write("win.txt", "x\r\n<<<<<<<\r\nours\r\n=======\r\ntheirs\r\n>>>>>>>\r\n")
    assert [f.line for f in of(repo.scan(), "conflict-markers")] == [2, 4, 6]


def test_heading_underline_alone_is_not_a_marker(repo: Repo) -> None:
    repo.write("docs/index.rst", "Title\n=======\n\nText with <<<<<<< inside a line.\n")
    repo.write("notes.md", "=======\n<<<<<<<<<< not a marker either\n")
    repo.write("other.py", "<<<<<<< HEAD\n")  # markers in another file do not count
    findings = repo.scan()
    assert [(f.path, f.line) for f in findings] == [("other.py", 1)]


def test_large_binary_fails_and_small_one_passes(repo: Repo) -> None:
    chunk = bytes(range(256))
    repo.write("assets/old.bin", chunk * 8)
    repo.write("assets/gone.bin", chunk * 8000)
    repo.base = repo.commit("binaries on the base")
    repo.write("assets/big.bin", chunk * 6000)  # 1,536,000 bytes
    repo.write("assets/small.bin", chunk * 40)
    repo.write("assets/old.bin", chunk * 5000)  # modified, now 1,280,000 bytes
    (repo.root / "assets/gone.bin").unlink()  # deleted binaries never fail
    findings = repo.scan()
    assert [(f.check, f.path, f.line, f.severity) for f in findings] == [
        ("binaries", "assets/big.bin", None, "fail"), ("binaries", "assets/old.bin", None, "fail")]
    assert "1.5 MB" in findings[0].message and "1.0 MB" in findings[0].message
    assert "1.3 MB" in findings[1].message


def test_binary_limit_and_unknown_size(repo: Repo) -> None:
    repo.write("a.bin", bytes(range(256)) * 4)
    text = repo.diff()
    found = scan_diff(text, declared_files=(), blob_size=lambda p: 2048, max_binary_bytes=1000)
    assert [f.message for f in found] == ["binary file of 2.0 kB is over the 1.0 kB limit"]
    assert scan_diff(text, declared_files=(), blob_size=lambda p: None, max_binary_bytes=1) == []


@pytest.fixture
def spread(repo: Repo) -> Repo:
    """Changes all over the tree: modified, added at several depths, renamed and deleted."""
    repo.write("old/name.txt", "keep me\n" * 20)
    repo.write("gone.txt", "bye\n")
    repo.base = repo.commit("base files")
    repo.write("README.md", "# demo\n\nmore\n")
    repo.write("src/b.py", "B = 1\n")
    repo.write("src/pkg/a.py", "A = 1\n")
    repo.write("docs/guide/intro.md", "hello\n")
    repo.mv("old/name.txt", "new/name.txt")
    (repo.root / "gone.txt").unlink()
    return repo


ALL = {"README.md", "src/b.py", "src/pkg/a.py", "docs/guide/intro.md", "old/name.txt",
       "new/name.txt", "gone.txt"}


@pytest.mark.parametrize(("patterns", "allowed"), [
    (("src/*.py",), {"src/b.py"}),
    (("src/**",), {"src/b.py", "src/pkg/a.py"}),
    (("src/**/*.py",), {"src/b.py", "src/pkg/a.py"}),
    (("**/*.md",), {"README.md", "docs/guide/intro.md"}),
    (("docs",), {"docs/guide/intro.md"}),
    (("docs/",), {"docs/guide/intro.md"}),
    (("./docs/guide",), {"docs/guide/intro.md"}),
    (("doc",), set()),  # a directory pattern is a whole name, not a prefix of one
    (("d?cs/*/*.md", "[a-s]rc/b.py"), {"docs/guide/intro.md", "src/b.py"}),
    (("[!s]rc/*", "src/[!b].py"), set()),
    (("src/[!a].py",), {"src/b.py"}),
    (("src/[]b].py",), {"src/b.py"}),
    (("new/*",), {"new/name.txt"}),  # the rename's source is still reported
    (("old/name.txt", "new/"), {"old/name.txt", "new/name.txt"}),
    (("gone.txt", "README.md"), {"gone.txt", "README.md"}),
    (("*",), {"README.md", "gone.txt"}),
])
def test_declared_files_warn_per_undeclared_path(
        spread: Repo, patterns: tuple[str, ...], allowed: set[str]) -> None:
    findings = spread.scan(patterns)
    assert all((f.check, f.line, f.severity) == ("declared-files", None, "warn") for f in findings)
    assert sorted(f.path for f in findings) == sorted(ALL - allowed)


def test_nothing_declared_means_unconstrained(spread: Repo) -> None:
    assert spread.scan(()) == []


def test_pure_rename_only_meets_the_declared_files_rule(repo: Repo) -> None:
    token = "ghp_" + fake(36)
    repo.write("secret.env", f"TOKEN={token}\n<<<<<<< HEAD\n")
    repo.base = repo.commit("base")
    repo.mv("secret.env", "moved.env")
    assert repo.scan() == []
    assert [f.path for f in repo.scan(("other/",))] == ["moved.env", "secret.env"]


def test_quoted_and_unusual_paths_come_out_decoded(repo: Repo) -> None:
    token = "ghp_" + fake(36)
    repo.write("src file.txt", "x\n")
    repo.base = repo.commit("base")
    repo.write("with space.txt", f"t={token}\n")
    repo.write("ünï cödé/résumé.md", "<<<<<<< HEAD\n")
    repo.write("plan b/notes.md", f"{token}\n")  # "diff --git a/plan b/notes.md b/plan b/notes.md"
    repo.write('quo"te\ttab.txt', f"{token}\n")
    repo.write("empty new.txt", "")
    repo.mv("src file.txt", "dést file.txt")
    findings = repo.scan(("nothing/",))
    assert [(f.check, f.path, f.line) for f in findings if f.check != "declared-files"] == [
        ("secrets", "plan b/notes.md", 1),
        ("secrets", 'quo"te\ttab.txt', 1),
        ("secrets", "with space.txt", 1),
        ("conflict-markers", "ünï cödé/résumé.md", 1),
    ]
    assert {f.path for f in of(findings, "declared-files")} == {
        "with space.txt", "ünï cödé/résumé.md", "plan b/notes.md", 'quo"te\ttab.txt',
        "empty new.txt", "src file.txt", "dést file.txt"}
    assert of(repo.scan(("*.txt", "**/*.md")), "declared-files") == []


def test_plain_unified_diff_without_git_headers() -> None:
    text = "--- a/notes.txt\n+++ b/notes.txt\n@@ -1 +1,2 @@\n keep\n+<<<<<<< mine\n"
    findings = scan_diff(text, declared_files=("docs/",), blob_size=lambda p: None)
    assert [(f.check, f.path, f.line) for f in findings] == [
        ("conflict-markers", "notes.txt", 2), ("declared-files", "notes.txt", None)]


def test_empty_diff_has_no_findings() -> None:
    assert scan_diff("", declared_files=("x",), blob_size=lambda p: None) == []
