"""Built-in gate checks that need no tools: they read a branch's diff and nothing else.

The input is the text of ``git diff --no-color --no-ext-diff -M BASE HEAD`` (default ``a/`` and
``b/`` prefixes). Everything here is pure: no git calls, no file reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from unidiff.patch import PatchedFile, PatchSet

from worktree_swarm.util.globs import glob_regex
from worktree_swarm.util.redact import SECRET_PATTERNS, is_placeholder, preview, redact_secrets

Severity = Literal["fail", "warn"]

CHECK_NAMES = ("conflict-markers", "secrets", "binaries", "declared-files")


@dataclass(frozen=True)
class Finding:
    check: str  # one of CHECK_NAMES
    path: str
    line: int | None  # line number in the new file, when there is one
    message: str  # one line; never holds a secret's value
    severity: Severity


def scan_diff(
    diff_text: str,
    *,
    declared_files: Sequence[str],
    blob_size: Callable[[str], int | None],
    max_binary_bytes: int = 1_000_000,
) -> list[Finding]:
    """Run every built-in check over a git diff: findings file by file in diff order, then the
    declared-files warnings. A path a finding names has its secrets redacted; the name of an added,
    renamed or copied file is scanned for secrets like an added line.

    ``blob_size(path)`` gives the new size of a changed binary, or None when unknown.
    Raises ``unidiff.UnidiffParseError`` when the text is not a diff.
    """
    findings: list[Finding] = []
    changed: dict[str, None] = {}  # ordered set
    for old, new, patched, named in _file_patches(diff_text):
        if new is not None:
            changed[new] = None
            shown = redact_secrets(new)
            added = [(ln.target_line_no, _strip_eol(ln.value)) for hunk in patched
                     for ln in hunk if ln.is_added]
            if named:
                findings += _secrets(shown, [(None, new)], where=" in the file's name")
            findings += _conflict_markers(shown, added)
            findings += _secrets(shown, added)
            if patched.is_binary_file:
                findings += _binary(shown, blob_size(new), max_binary_bytes)
        if old is not None:
            changed[old] = None
    if declared_files:
        matchers = [glob_regex(p) for p in declared_files]
        findings += [
            Finding("declared-files", redact_secrets(path), None,
                    "changed outside the task's declared files", "warn")
            for path in changed if not any(m.fullmatch(path) for m in matchers)
        ]
    return findings


# --- conflict markers -------------------------------------------------------------------------

_MARKERS = ("<<<<<<<", ">>>>>>>", "|||||||")


def _conflict_markers(path: str, added: list[tuple[int | None, str]]) -> list[Finding]:
    def is_marker(text: str) -> bool:
        return any(text == m or text.startswith(m + " ") for m in _MARKERS)

    # "=======" alone is a heading underline in RST and markdown; it is a marker only beside others.
    has_sides = any(is_marker(text) and not text.startswith("|") for _, text in added)
    return [
        Finding("conflict-markers", path, line_no, f"merge conflict marker {text[:7]!r}", "fail")
        for line_no, text in added
        if is_marker(text) or (has_sides and text == "=======")
    ]


# --- secrets ----------------------------------------------------------------------------------

# (kind, pattern); the group "secret" is the variable part that the placeholder rule looks at.
def _secrets(path: str, added: list[tuple[int | None, str]], *, where: str = "") -> list[Finding]:
    findings = []
    for line_no, text in added:
        taken: list[tuple[int, int]] = []
        on_line: list[tuple[int, Finding]] = []
        for kind, pattern in SECRET_PATTERNS:
            for match in pattern.finditer(text):
                start, end = match.span()
                if any(start < e and s < end for s, e in taken):
                    continue
                if kind != "PEM private key" and is_placeholder(match.group("secret")):
                    continue
                taken.append((start, end))
                # the assignment's key name says nothing; preview the value's start instead
                shown = match.group("secret") if kind.startswith("AWS secret") else match.group()
                on_line.append((start, Finding("secrets", path, line_no,
                                               f"possible {kind}{where}: {preview(shown)}", "fail")))
        findings += [finding for _, finding in sorted(on_line, key=lambda pair: pair[0])]
    return findings


# --- binaries ---------------------------------------------------------------------------------

def _binary(path: str, size: int | None, limit: int) -> list[Finding]:
    if size is None or size <= limit:
        return []
    return [Finding("binaries", path, None,
                    f"binary file of {_human(size)} is over the {_human(limit)} limit", "fail")]


def _human(size: int) -> str:
    """Decimal units, like the decimal default limit (1 MB = 1,000,000 bytes)."""
    if size < 1000:
        return f"{size} B"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    raise AssertionError("unreachable")


# --- declared files ---------------------------------------------------------------------------

# --- paths ------------------------------------------------------------------------------------

_GIT_HEADER = re.compile(r"^diff --git .*$", re.MULTILINE)
_FIRST_HUNK = re.compile(r"^@@ ", re.MULTILINE)
_OLD_NAME = re.compile(r"^--- (?!/dev/null$).*$", re.MULTILINE)
_NEW_NAME = re.compile(r"^\+\+\+ (?!/dev/null$).*$", re.MULTILINE)


def _file_patches(diff_text: str) -> Iterator[tuple[str | None, str | None, PatchedFile, bool]]:
    """Each changed file as (old path, new path, patch, whether the new path is a new name). The old
    path is None unless the file was deleted or renamed away (a copy's source is untouched); the new
    path is None when deleted; a new name is that of an added, renamed or copied file."""
    starts = [m.start() for m in _GIT_HEADER.finditer(diff_text)]
    if not starts:  # not git's format: trust unidiff's names
        for patched in PatchSet(diff_text):
            old = _strip_prefix(_unquote(patched.source_file))
            new = _strip_prefix(_unquote(patched.target_file))
            yield (old, None, patched, False) if patched.is_removed_file else \
                (None, new, patched, patched.source_file == "/dev/null")
        return
    for start, end in zip(starts, starts[1:] + [len(diff_text)]):
        header, _, body = diff_text[start:end].partition("\n")
        cut = m.start() if (m := _FIRST_HUNK.search(body)) else len(body)
        # unidiff splits an unquoted "diff --git a/x b/y b/x b/y" at the last " b/" and then rejects
        # the "+++ b/x b/y" line, so it gets neutral names; the real ones come from git's header.
        extended = _NEW_NAME.sub("+++ b/f", _OLD_NAME.sub("--- a/f", body[:cut]))
        names = {key: _unquote(line.removeprefix(key)) for line in extended.split("\n")
                 for key in ("rename from ", "rename to ", "copy to ") if line.startswith(key)}
        # unidiff also calls a file whose one hunk starts at line 0 added: an empty file filled in
        is_new = any(line.startswith("new file mode ") for line in extended.split("\n"))
        for patched in PatchSet("diff --git a/f b/f\n" + extended + body[cut:]):
            if "rename to " in names:
                yield names.get("rename from "), names["rename to "], patched, True
            elif "copy to " in names:
                yield None, names["copy to "], patched, True
            else:
                old, new = _header_paths(header)
                yield (old, None, patched, False) if patched.is_removed_file else (None, new, patched, is_new)


def _header_paths(header: str) -> tuple[str, str]:
    """Both names of a ``diff --git`` header line, unquoted and without their a/ b/ prefixes."""
    rest = header.removeprefix("diff --git ")
    if rest.startswith('"'):
        first, tail = _split_quoted(rest)
        return _strip_prefix(first), _strip_prefix(_unquote(tail.lstrip(" ")))
    # Without a rename both names are equal, so an unquoted header holding spaces splits in the
    # middle (git apply reads it the same way).
    half = len(rest) // 2
    return _strip_prefix(rest[:half]), _strip_prefix(rest[half + 1:])


_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def _split_quoted(text: str) -> tuple[str, str]:
    """Decode the C-style quoted name that ``text`` starts with; return it and what follows."""
    out = bytearray()
    i = 1
    while i < len(text) and text[i] != '"':
        if text[i] == "\\" and i + 1 < len(text):
            if text[i + 1] in "01234567":
                out.append(int(text[i + 1:i + 4], 8))
                i += 4
                continue
            if text[i + 1] in _ESCAPES:
                out.append(_ESCAPES[text[i + 1]])
            else:
                out += text[i + 1].encode("utf-8", "surrogateescape")
            i += 2
        else:
            out += text[i].encode("utf-8", "surrogateescape")
            i += 1
    # git quotes raw path bytes; surrogateescape keeps a non-UTF-8 name round-trippable.
    return out.decode("utf-8", "surrogateescape"), text[i + 1:]


def _unquote(name: str) -> str:
    return _split_quoted(name)[0] if name.startswith('"') else name


def _strip_prefix(name: str) -> str:
    return name[2:] if name[:2] in ("a/", "b/") else name


def _strip_eol(value: str) -> str:
    return value.removesuffix("\n").removesuffix("\r")

