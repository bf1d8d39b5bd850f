"""Admission control: a new agent starts only while the machine has room for it ([limits])."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from worktree_swarm.config import LimitsConfig
from worktree_swarm.store.events import EventKind

# How the throttle reports: an event kind and its data (the run's store.event).
EventSink = Callable[[EventKind, dict[str, Any]], object]
# wswarm's folder is walked at most this often: in a large repository every slot holds tens of
# thousands of files.
DISK_WALK_EVERY = 10.0


@dataclass(frozen=True)
class Refusal:
    """Why no new agent may start now: which limit (stable, for the events) and a sentence."""

    limit: str
    reason: str


class Admission:
    """Reads the machine (psutil) each time it is asked; walks wswarm's folder only with a budget."""

    def __init__(self, limits: LimitsConfig, *, state_dir: Path) -> None:
        self.limits = limits
        self.state_dir = state_dir
        self._disk = _DiskUse(state_dir) if limits.disk_budget_mb is not None else None

    def refusal(self) -> Refusal | None:
        """None when the machine is within every limit; else the first limit it is past."""
        lim = self.limits
        if lim.max_load is not None:
            load = psutil.getloadavg()[0] / (psutil.cpu_count() or 1)
            if load > lim.max_load:
                return Refusal("max_load", f"the load average is {load:.2f} per CPU, over [limits] max_load = "
                                           f"{lim.max_load:g}")
        if lim.min_free_memory_mb:
            free = psutil.virtual_memory().available / 2**20
            if free < lim.min_free_memory_mb:
                return Refusal("min_free_memory_mb", f"{free:.0f} MB of memory is available, under [limits] "
                                                     f"min_free_memory_mb = {lim.min_free_memory_mb:g}")
        if lim.min_free_disk_mb:
            free = psutil.disk_usage(str(self.state_dir)).free / 2**20
            if free < lim.min_free_disk_mb:
                return Refusal("min_free_disk_mb", f"{free:.0f} MB of disk is free, under [limits] "
                                                   f"min_free_disk_mb = {lim.min_free_disk_mb:g}")
        if self._disk is not None and lim.disk_budget_mb is not None:
            used = self._disk.megabytes()
            if used > lim.disk_budget_mb:
                return Refusal("disk_budget_mb", f"wswarm uses {used:.0f} MB of disk in {self.state_dir}, over "
                                                 f"[limits] disk_budget_mb = {lim.disk_budget_mb:g}")
        return None

    def close(self) -> None:
        if self._disk is not None:
            self._disk.stop()


class _DiskUse:
    """The size of a folder, measured once synchronously, then again in the background."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._value: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def megabytes(self) -> float:
        if self._value is None:
            self._value = folder_bytes(self.root) / 2**20
            self._thread = threading.Thread(target=self._loop, name="wswarm-disk-use", daemon=True)
            self._thread.start()
        return self._value

    def _loop(self) -> None:
        while not self._stop.wait(DISK_WALK_EVERY):
            self._value = folder_bytes(self.root) / 2**20

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def folder_bytes(root: Path) -> int:
    """Bytes of disk the files under ROOT occupy (allocated blocks; links not followed)."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue            # removed meanwhile, or unreadable: not ours to count
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total


class Throttle:
    """The scheduler's side: asks before each launch, and tells the events when it starts or stops
    waiting (once per change of limit, not at every tick)."""

    def __init__(self, admission: Admission, event: EventSink) -> None:
        self.admission = admission
        self.event = event
        self.waiting: Refusal | None = None
        self._since = 0.0

    def admit(self, *, running: int) -> bool:
        """Whether one more agent may start beside RUNNING others."""
        refusal = self.admission.refusal()
        if refusal is None:
            if self.waiting is not None:
                self.event(EventKind.RESOURCES_AVAILABLE, {"waited_s": round(time.monotonic() - self._since, 3)})
                self.waiting = None
            return True
        if running == 0:
            # One agent always starts: waiting for a machine that never frees up would stall the run.
            return True
        if self.waiting is None or self.waiting.limit != refusal.limit:
            if self.waiting is None:
                self._since = time.monotonic()
            self.event(EventKind.WAITING_FOR_RESOURCES, {"limit": refusal.limit, "reason": refusal.reason,
                                                 "running": running})
        self.waiting = refusal
        return False
