"""`wswarm logs TASK [--follow]`: a task's attempt logs, each attempt's gate verdict with what its
checks found, and with --follow new output and new attempts as they come, the way `tail -f`
follows several files."""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from pathlib import Path

from worktree_swarm.gate.report import GateReport, findings
from worktree_swarm.git.refs import encode
from worktree_swarm.store.run_store import RunStore
from worktree_swarm.ui.feed import SETTLED

GATE_FILE = "gate.json"   # written once, when the attempt's gate has judged it


def log_files(store: RunStore, task_id: str, *, gate: bool = False) -> list[tuple[int, Path]]:
    """Every log of the task's attempts: (attempt, path), attempts in order, then by file name; with
    GATE, each attempt's gate report after its logs, once there is one."""
    root = store.dir / "attempts" / encode(task_id)
    if not root.is_dir():
        return []
    out: list[tuple[int, Path]] = []
    for attempt in sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        out.extend((int(attempt.name), log) for log in sorted(attempt.glob("*.log")))
        if gate and (attempt / GATE_FILE).is_file():
            out.append((int(attempt.name), attempt / GATE_FILE))
    return out


def gate_text(report: GateReport) -> str:
    """The verdict, then each finding of a failing or warning check on a line of its own."""
    lines = [report.summary()] + [f"  {f.check}: {f}" for f in findings(report)]
    return "\n".join(lines) + "\n"


class LogFollower:
    """Prints what each log gained since the last look, with a header whenever the file changes."""

    def __init__(self, store: RunStore, task_id: str, write: Callable[[str], None]) -> None:
        self.store = store
        self.task_id = task_id
        self.write = write
        self._offsets: dict[Path, int] = {}
        self._decoders: dict[Path, codecs.IncrementalDecoder] = {}
        self._current: Path | None = None
        self._gates: set[Path] = set()
        self._mid_line = False

    def step(self) -> None:
        for attempt, path in log_files(self.store, self.task_id, gate=True):
            if path.name == GATE_FILE:
                self._gate(attempt, path)
                continue
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

    def _gate(self, attempt: int, path: Path) -> None:
        """The attempt's gate verdict and findings, once: the report is written whole, never grown."""
        if path in self._gates:
            return
        try:
            report = GateReport.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return   # still being written: read it on the next step
        self._gates.add(path)
        self.write(("\n" if self._mid_line else "") + f"==> attempt {attempt}: gate <==\n" + gate_text(report))
        self._current, self._mid_line = path, False

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
