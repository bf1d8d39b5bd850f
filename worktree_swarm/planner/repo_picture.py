"""A compact picture of a repository at one commit, for the planner: file tree with sizes, README
head, languages, recent commit subjects and the gate's checks. Committed state only."""

from __future__ import annotations

import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pygit2

from worktree_swarm.config import Config
from worktree_swarm.gate.detect import detect_checks
from worktree_swarm.git.repo import Repo
from worktree_swarm.util.types import Sha

MAX_TREE_ENTRIES = 200
README_LINES = 40
README_CHARS = 2500
RECENT_COMMITS = 12
# The gate detects checks from files at most three levels down (gate/detect.py); a skeleton of that
# much of the commit is enough, and keeps a huge repository from being written out.
_SKELETON_DEPTH = 3
_SKELETON_MAX_FILES = 5000
_ROOT_FILE_MAX_BYTES = 256 * 1024

LANGUAGES = {
    ".py": "Python", ".pyi": "Python", ".js": "JavaScript", ".mjs": "JavaScript", ".cjs": "JavaScript",
    ".jsx": "JavaScript", ".ts": "TypeScript", ".tsx": "TypeScript", ".go": "Go", ".rs": "Rust",
    ".java": "Java", ".kt": "Kotlin", ".rb": "Ruby", ".php": "PHP", ".cs": "C#", ".c": "C", ".h": "C",
    ".cc": "C++", ".cpp": "C++", ".hpp": "C++", ".swift": "Swift", ".scala": "Scala", ".sh": "Shell",
    ".vue": "Vue", ".svelte": "Svelte", ".css": "CSS", ".scss": "CSS", ".html": "HTML", ".md": "Markdown",
    ".rst": "reStructuredText", ".sql": "SQL", ".toml": "TOML", ".yaml": "YAML", ".yml": "YAML",
    ".json": "JSON",
}


@dataclass(frozen=True)
class Picture:
    """What the planner is shown about the repository; `files` are the tracked paths with sizes."""

    name: str
    base: Sha
    base_ref: str
    files: tuple[tuple[str, int], ...]
    readme: str | None
    commits: tuple[str, ...]
    checks: tuple[str, ...]

    def render(self) -> str:
        """The picture as Markdown for the model's first message."""
        total = sum(size for _, size in self.files)
        parts = [f"Repository `{self.name}` at {self.base_ref} ({self.base[:12]}): {_files(len(self.files))} "
                 f"tracked, {human_size(total)}."]
        parts.append("## Files\n\n" + "\n".join(file_tree(self.files)))
        langs = languages(self.files)
        if langs:
            parts.append("## Languages\n\n" + ", ".join(f"{lang} ({_files(count)}, {human_size(size)})"
                                                         for lang, count, size in langs))
        if self.readme:
            parts.append(f"## README (head)\n\n{self.readme}")
        if self.commits:
            parts.append("## Recent commits\n\n" + "\n".join(f"- {s}" for s in self.commits))
        parts.append("## Quality gate\n\nEvery task's branch must pass these checks before it merges: "
                     + ("; ".join(self.checks) if self.checks else "only the built-in diff checks (no test, "
                        "type or security tool detected)."))
        return "\n\n".join(parts) + "\n"


def take_picture(repo: Repo, base: Sha, *, base_ref: str, config: Config) -> Picture:
    """The picture of BASE, read from git objects only (the working tree is never looked at)."""
    files = tracked_files(repo, base)
    subjects = repo.git("log", "-n", str(RECENT_COMMITS), "--format=%s", base).stdout.splitlines()
    return Picture(name=repo.root.name, base=base, base_ref=base_ref, files=tuple(files),
                   readme=_readme(repo, base, files), commits=tuple(s for s in subjects if s.strip()),
                   checks=tuple(_checks(repo, base, files, config)))


def tracked_files(repo: Repo, commit: str) -> list[tuple[str, int]]:
    """(path, size in bytes) of every blob in COMMIT's tree; submodules and symlinks count as 0."""
    out = repo.git("ls-tree", "-r", "-l", "-z", "--full-tree", commit).stdout
    files: list[tuple[str, int]] = []
    for record in out.split("\0"):
        if not record:
            continue
        meta, _, path = record.partition("\t")
        size = meta.split()[-1]
        files.append((path, int(size) if size.isdigit() else 0))
    return files


def file_tree(files: Sequence[tuple[str, int]], *, limit: int = MAX_TREE_ENTRIES) -> list[str]:
    """One line per file with its size; when there are more than LIMIT, directories below the
    deepest level that fits are summarised as `dir/ (N files, SIZE)`."""
    if len(files) <= limit:
        return [f"{path} ({human_size(size)})" for path, size in sorted(files)]
    best: list[str] = []
    for depth in range(1, max(path.count("/") for path, _ in files) + 1):
        lines = _collapsed(files, depth)
        if len(lines) > limit:
            break
        best = lines
    if not best:  # even the top level is too long
        best = _collapsed(files, 1)
        more = len(best) - limit
        best = best[:limit] + [f"... and {more} more entries"]
    return best


def _collapsed(files: Sequence[tuple[str, int]], depth: int) -> list[str]:
    """Files at most DEPTH levels down as themselves; deeper ones summed up per directory at DEPTH."""
    shown: dict[str, int] = {}
    dirs: dict[str, list[int]] = defaultdict(list)
    for path, size in files:
        parts = path.split("/")
        if len(parts) <= depth:
            shown[path] = size
        else:
            dirs["/".join(parts[:depth]) + "/"].append(size)
    lines = {path: f"{path} ({human_size(size)})" for path, size in shown.items()}
    lines.update({d: f"{d} ({_files(len(sizes))}, {human_size(sum(sizes))})" for d, sizes in dirs.items()})
    return [lines[key] for key in sorted(lines)]


def languages(files: Sequence[tuple[str, int]], *, top: int = 8) -> list[tuple[str, int, int]]:
    """(language, file count, bytes) by file extension, the biggest first."""
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for path, size in files:
        lang = LANGUAGES.get(PurePosixPath(path).suffix.lower())
        if lang:
            counts[lang] += 1
            sizes[lang] += size
    ranked = sorted(counts, key=lambda lang: (-sizes[lang], -counts[lang], lang))
    return [(lang, counts[lang], sizes[lang]) for lang in ranked[:top]]


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def human_size(size: int) -> str:
    for unit, scale in (("MB", 1_000_000), ("kB", 1_000)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def readme_head(text: str) -> str:
    head = "\n".join(text.splitlines()[:README_LINES])
    return head if len(head) <= README_CHARS else head[:README_CHARS] + " [...]"


def _readme(repo: Repo, base: Sha, files: Sequence[tuple[str, int]]) -> str | None:
    names = [path for path, _ in files if "/" not in path and path.lower().startswith("readme")]
    if not names:
        return None
    name = sorted(names, key=lambda n: (n.lower() != "readme.md", n))[0]
    data = _blob(repo, base, name)
    return readme_head(data.decode("utf-8", errors="replace")) if data is not None else None


def _blob(repo: Repo, commit: str, path: str) -> bytes | None:
    try:
        obj = repo.pygit[commit].peel(pygit2.Commit).tree[path]
    except (KeyError, ValueError):
        return None
    return obj.data if isinstance(obj, pygit2.Blob) else None


def _checks(repo: Repo, base: Sha, files: Sequence[tuple[str, int]], config: Config) -> list[str]:
    """The configured gate checks, else the ones the gate would detect in BASE."""
    if config.gate.checks:
        return [f"{c.name} ({c.kind}: `{c.run}`)" for c in config.gate.checks]
    # detect_checks reads a directory; give it a skeleton of the commit: every path of the first
    # levels (empty), and the small files at the root (the configs it parses) with their content.
    with tempfile.TemporaryDirectory(prefix="wswarm-picture-") as scratch:
        root = Path(scratch)
        written = 0
        for path, size in files:
            parts = path.split("/")
            # git checks paths on checkout, not on fetch: a crafted tree can hold `..` or a name twice.
            if (len(parts) > _SKELETON_DEPTH or written >= _SKELETON_MAX_FILES
                    or any(part in ("", ".", "..") for part in parts)):
                continue
            target = root.joinpath(*parts)
            data = _blob(repo, base, path) if len(parts) == 1 and size <= _ROOT_FILE_MAX_BYTES else None
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data or b"")
            except OSError:
                continue
            written += 1
        found = detect_checks(root)
    return [f"{d.check.name} ({d.check.kind}, because {d.why}{'' if d.installed else '; not installed here'})"
            for d in found]
