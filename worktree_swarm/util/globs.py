"""Repo-relative glob patterns, as plan files and gate configuration write them."""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Collection


@functools.lru_cache(maxsize=4096)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a repo-relative glob: ``*`` and ``?`` stay within one directory, ``**`` crosses
    directories, ``[...]`` is a class; ``dir/`` or a literal ``dir`` matches everything under it."""
    pattern = pattern.removeprefix("./").lstrip("/")
    is_dir = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := _class_end(pattern, i)) > 0:
            body = pattern[i + 1:end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            body = re.sub(r"([\\\[\]])", r"\\\1", body)
            out.append(f"[^/{body}]" if negate else f"(?!/)[{body}]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    literal = not any(ch in pattern for ch in "*?[")
    suffix = "/.*" if is_dir else "(?:/.*)?" if literal else ""
    return re.compile("".join(out) + suffix)


def _class_end(pattern: str, start: int) -> int:
    """Index of the "]" closing the class opened at ``start``, or -1 (then "[" is literal)."""
    i = start + 1
    if pattern[i:i + 1] in ("!", "^"):
        i += 1
    if pattern[i:i + 1] == "]":  # a leading "]" is a member, as in fnmatch
        i += 1
    return pattern.find("]", i)


class TrackedFiles:
    """The tracked files each `files` pattern matches, computed once per pattern."""

    def __init__(self, files: Collection[str]) -> None:
        self.files = sorted(files)
        self._matching: dict[str, frozenset[str]] = {}

    def matching(self, pattern: str) -> frozenset[str]:
        if pattern not in self._matching:
            regex = glob_regex(pattern)
            # Only files starting with the pattern's text before its first wildcard can match: a
            # range of the sorted list (a plan of 50 literal paths on 5,000 files: 250,000 regex
            # matches become 50 binary searches).
            text = pattern.removeprefix("./").lstrip("/")
            prefix = text[:min((i for i in map(text.find, "*?[") if i >= 0), default=len(text))]
            lo, hi = bisect.bisect_left(self.files, prefix), bisect.bisect_left(self.files, prefix + "\U0010ffff")
            self._matching[pattern] = frozenset(f for f in self.files[lo:hi] if regex.fullmatch(f))
        return self._matching[pattern]


def patterns_overlap(p: str, q: str, files: Collection[str] | TrackedFiles = ()) -> str | None:
    """What two `files` patterns may both match, phrased for a message; None when they cannot.

    Same pattern, one matching the other's text (a glob and a path, or a directory and a path
    in it), or a tracked file both match. Patterns are read as the gate reads them."""
    p_norm, q_norm = _norm(p), _norm(q)
    if p_norm == q_norm:
        return repr(p)
    rp, rq = glob_regex(p_norm), glob_regex(q_norm)
    if rp.fullmatch(q_norm.rstrip("/")) or rq.fullmatch(p_norm.rstrip("/")):
        return f"{p!r} / {q!r}"
    tracked = files if isinstance(files, TrackedFiles) else TrackedFiles(files)
    both = tracked.matching(p_norm) & tracked.matching(q_norm)
    return f"{min(both)!r} (patterns {p!r} and {q!r})" if both else None


def _norm(pattern: str) -> str:
    return pattern.strip().removeprefix("./")
