"""`wswarm logs TASK [--follow]`: a task's attempt logs, and with --follow new output and new
attempts as they come, the way `tail -f` follows several files."""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from pathlib import Path

from worktree_swarm.git.refs import encode
from worktree_swarm.state import RunStore
from worktree_swarm.ui.feed import SETTLED


def log_files(store: RunStore, task_id: str) -> list[tuple[int, Path]]:
    """Every log of the task's attempts: (attempt, path), attempts in order, then by file name."""
    root = store.dir / "attempts" / encode(task_id)
    if not root.is_dir():
        return []
    out: list[tuple[int, Path]] = []
    for attempt in sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        out.extend((int(attempt.name), log) for log in sorted(attempt.glob("*.log")))
    return out


class LogFollower:
    """Prints what each log gained since the last look, with a header whenever the file changes."""

    def __init__(self, store: RunStore, task_id: str, write: Callable[[str], None]) -> None:
        self.store = store
        self.task_id = task_id
        self.write = write
        self._offsets: dict[Path, int] = {}
        self._decoders: dict[Path, codecs.IncrementalDecoder] = {}
        self._current: Path | None = None
        self._mid_line = False

    def step(self) -> None:
        for attempt, path in log_files(self.store, self.task_id):
            first = path not in self._offsets
            offset = self._offsets.setdefault(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except FileNotFoundError:
                continue
            if not data and not first:
                continue
            self._offsets[path] = offset + len(data)
            decoder = self._decoders.setdefault(path, codecs.getincrementaldecoder("utf-8")(errors="replace"))
            text = decoder.decode(data)
            if path != self._current:
                # Switching files in the middle of a line: end it, so the header stands on its own.
                self.write(("\n" if self._mid_line else "") + f"==> attempt {attempt}: {path.name} <==\n")
                self._current, self._mid_line = path, False
            if text:
                self.write(text)
                self._mid_line = not text.endswith("\n")

    def finish(self) -> None:
        """End the output with a newline, like every log line does."""
        if self._mid_line:
            self.write("\n")
            self._mid_line = False

    def settled(self) -> bool:
        """The task is done for this run (merged, failed, blocked), or nobody drives the run."""
        return self.store.task(self.task_id).status in SETTLED or not self.store.is_live()

    def follow(self, *, poll: float = 0.2) -> None:
        """Print until the task is settled or the run stops; Ctrl-C only stops the printing."""
        try:
            while True:
                done = self.settled()   # judged before reading, so the last output is printed
                self.step()
                if done:
                    self.finish()
                    return
                time.sleep(poll)
        except KeyboardInterrupt:
            return
