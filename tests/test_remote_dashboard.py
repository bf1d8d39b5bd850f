"""The dashboard of a distributed run: remote agents show with their worker's name, beside an agent
of the integrator's own machine (a real redis-server and worker, `wswarm dashboard`, the page in
Debian's chromium through Playwright)."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import WSWARM, write_plan
from tests.live_run import need_tool
from tests.test_remote_run import Cluster, agent_cmd, cluster, events, until  # noqa: F401  (cluster is a fixture)
from tests.test_remote_mixed import side_by_side

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as res:
        return json.loads(res.read())


def _assigned(c: Cluster) -> dict[str, str | None]:
    """Task -> the worker that took its attempt (None: this machine), once the run has a log."""
    if not list((c.repo.state_dir / "runs").glob("*/events.jsonl")):
        return {}
    return {e["task"]: e.get("worker") for e in events(c.repo) if e["kind"] == "attempt-assigned"}


def test_remote_agents_show_with_their_workers_name(cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    chromium = need_tool("/usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    agent, marks = agent_cmd(tmp_path)
    plan = write_plan(tmp_path / "plan.json", [
        {"id": t, "type": "feature", "description": t, "files": [f"out/{t}.txt"]} for t in "ab"])
    # One attempt on workers at once and one agent here: one task runs on each, both waiting for the test.
    integrator = side_by_side(cluster, plan, agent, marks, worker="box-1")
    dashboard: subprocess.Popen[str] | None = None
    try:
        # Both agents running, and the worker has said it took its attempt.
        on = until(lambda: len(w := _assigned(cluster)) == 2 and w, what="both attempts assigned")
        dashboard = subprocess.Popen([*WSWARM, "dashboard", "--port", "0", "--no-open"], cwd=cluster.repo.path,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        assert dashboard.stdout is not None
        url = dashboard.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), dashboard.communicate(timeout=10)[1]
        [remote] = [t for t, worker in on.items() if worker == "box-1"]
        [local] = [t for t, worker in on.items() if worker is None]
        run = _get(url.rstrip("/") + "/api/runs")["default"]
        view = _get(url.rstrip("/") + f"/api/runs/{run}/view")
        assert {a["task"]: a["worker"] for a in view["agents"] if a["task"]} == {remote: "box-1", local: None}
        # The task's worktree names the worker's machine too (WORKER:PATH); the local one is a path here.

        def worktrees() -> dict[str, str]:
            return {t["id"]: t["worktree"] or "" for t in _get(url.rstrip("/") + f"/api/runs/{run}/status")["tasks"]}

        until(lambda: worktrees()[remote].startswith("box-1:") and worktrees()[local], what="both worktrees recorded")
        assert Path(worktrees()[local]).is_dir()

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector(f'.agent[data-task="{remote}"] .agent-worker')
            assert page.inner_text(f'.agent[data-task="{remote}"] .agent-worker') == "on box-1"
            page.wait_for_selector(f'.agent[data-task="{local}"][data-status="running"]')
            assert page.locator(f'.agent[data-task="{local}"] .agent-worker').count() == 0
            browser.close()
        (marks / "go").write_text("")
        _, err = integrator.communicate(timeout=120)
        assert integrator.returncode == 0, err
    finally:
        if integrator.poll() is None:
            integrator.send_signal(signal.SIGINT)
            integrator.communicate(timeout=60)
        if dashboard is not None and dashboard.poll() is None:
            dashboard.send_signal(signal.SIGINT)
            dashboard.communicate(timeout=10)
