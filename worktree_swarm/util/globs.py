"""Repo-relative glob patterns, as plan files and gate configuration write them."""

from __future__ import annotations

import re


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
