"""The walk of an agent's worktree: what it finds, and the remembering walk (`Scanner`, used on slots
attempt after attempt) finding exactly what a fresh walk finds whatever changed in between."""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

from worktree_swarm.git.residue import Scanner, scan

# Longer than a tick of the clock that stamps ctimes (1-10 ms), so a change made after a pause
# never shares a tick with the listing before it.
SETTLED_NS = 30_000_000
PAUSE = 0.05


def tree(root: Path) -> None:
    for d in range(6):
        for f in range(5):
            (root / f"d{d}" / f"s{f % 2}").mkdir(parents=True, exist_ok=True)
            (root / f"d{d}" / f"s{f % 2}" / f"f{f}.txt").write_text("x")
    (root / ".git").write_text("gitdir: /somewhere/else\n")      # the worktree's own: never listed


def mutate(root: Path, rng: random.Random) -> None:
    folders = [Path(p) for p, _, _ in os.walk(root) if ".git" not in Path(p).parts]
    for _ in range(rng.randint(1, 4)):
        here = rng.choice(folders)
        if not here.exists():
            continue
        what = rng.randrange(9)
        if what == 0:
            (here / "repo" / ".git").mkdir(parents=True, exist_ok=True)            # a nested repository
        elif what == 1:
            (here / ".git").write_text("gitdir: ../x\n") if here != root else None   # a .git file
        elif what == 2:
            (here / "__pycache__").mkdir(exist_ok=True)
            (here / "__pycache__" / "m.pyc").write_text("junk")
        elif what == 3:
            (here / f"n{rng.randrange(99)}.pyc").write_text("junk")
        elif what == 4:
            (here / f"new{rng.randrange(99)}").mkdir(exist_ok=True)
        elif what == 5 and here != root:
            shutil.rmtree(here)
        elif what == 6 and here != root:
            target = root / f"moved{rng.randrange(99)}"
            if not target.exists():
                here.rename(target)
        elif what == 7:
            link = here / f"link{rng.randrange(99)}"
            if not link.exists() and not link.is_symlink():
                link.symlink_to(root / "d0")                 # a link to a folder: never walked through
        else:
            for child in here.iterdir():
                if child.name.endswith(".pyc") or child.name == ".git":
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def test_the_remembering_walk_finds_what_a_fresh_walk_finds_after_any_change(tmp_path: Path) -> None:
    common = tmp_path / "common"
    for seed in range(3):
        root = tmp_path / f"wt{seed}"
        root.mkdir()
        tree(root)
        rng = random.Random(seed)
        scanner = Scanner(settled_ns=SETTLED_NS)
        listed = 0
        for _ in range(15):
            time.sleep(PAUSE)
            mutate(root, rng)
            if rng.random() < 0.7:
                time.sleep(PAUSE)        # settled: the remembered listings are trusted
            assert scanner.scan(root, common_dir=common) == scan(root, common_dir=common)
            listed += 1
        assert listed == 15


def test_folders_changed_just_before_their_listing_are_listed_again(tmp_path: Path) -> None:
    """A change in the clock tick of a listing can leave the folder's ctime as it was: folders
    changed less than `settled_ns` before they were listed are not vouched for by their status."""
    common = tmp_path / "common"
    root = tmp_path / "wt"
    root.mkdir()
    tree(root)
    folders = 1 + 6 * 3
    scanner = Scanner()             # the real margin: a second
    scanner.scan(root, common_dir=common)
    assert scanner.listed == folders
    scanner.scan(root, common_dir=common)
    assert scanner.listed == folders          # all of them were changed a moment ago
    settled = Scanner(settled_ns=SETTLED_NS)
    time.sleep(PAUSE)
    settled.scan(root, common_dir=common)
    assert settled.listed == folders
    settled.scan(root, common_dir=common)
    assert settled.listed == 0
    (root / "d3" / "s1" / "repo").mkdir()
    (root / "d3" / "s1" / "repo" / ".git").mkdir()
    assert settled.scan(root, common_dir=common).nested == ["d3/s1/repo/.git"]
    assert settled.listed == 2                # the changed folder and the one made (a .git is not walked)


def test_a_git_file_rewritten_in_place_is_read_again(tmp_path: Path) -> None:
    """A `.git` file's content changes without its folder's status: a submodule checkout's link
    rewritten to point elsewhere is a nested repository from then on."""
    common = tmp_path / "common"
    (common / "modules" / "lib").mkdir(parents=True)
    root = tmp_path / "wt"
    (root / "lib").mkdir(parents=True)
    gitfile = root / "lib" / ".git"
    gitfile.write_text(f"gitdir: {common / 'modules' / 'lib'}\n")
    scanner = Scanner(settled_ns=0)
    time.sleep(PAUSE)
    assert scanner.scan(root, common_dir=common).nested == []
    with open(gitfile, "r+") as f:                   # in place: the folder's ctime does not move
        f.write(f"gitdir: {tmp_path}/elsewhere/modules/x\n")
    assert scanner.scan(root, common_dir=common).nested == ["lib/.git"]
