"""Conflict forecasts in the views of a real run: two agents change the same file, and the view the
dashboard serves (and the page draws) shows the forecast while it stands, and not once it is over.

The agents hold their work until the test releases them, so every step waits on an event the run
writes, never on a clock.
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from conftest import WSWARM, Repo, task, wait_for
from live_run import LiveRun, need_tool

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Writes app/core.py at once, then holds its work until GO_DIR/<task>, <task>.<attempt> or all exists.
HOLDING_AGENT = r'''
tid, attempt = os.environ["WSWARM_TASK_ID"], os.environ["WSWARM_ATTEMPT"]
go = Path(os.environ["GO_DIR"])
Path("app/core.py").write_text(f"VALUE = '{tid}'\n")
deadline = time.time() + 60
while not any((go / name).exists() for name in (tid, f"{tid}.{attempt}", "all")):
    if time.time() > deadline:
        sys.exit(1)
    time.sleep(0.05)
'''


def standing(view: dict[str, Any]) -> set[tuple[str, int, str, tuple[str, ...]]]:
    return {(f["task"], f["attempt"], f["other"], tuple(f["files"])) for f in view["forecasts"]}


def test_a_forecast_is_in_the_served_view_and_on_the_page_while_it_stands(
        repo: Repo, agent_script: Any, tmp_path: Path) -> None:
    run = LiveRun(repo, agent_script(HOLDING_AGENT), [task("left"), task("right")], tmp_path / "go", agents=2)
    server = subprocess.Popen([*WSWARM, "dashboard", "--port", "0", "--no-open"], cwd=repo.path,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), server.stderr.read() if server.stderr else ""

        def view() -> dict[str, Any]:
            with urllib.request.urlopen(f"{url.rstrip('/')}/api/runs/{run.id}/view", timeout=10) as res:
                data: dict[str, Any] = json.loads(res.read())
                return data

        both = {("left", 1, "right", ("app/core.py",)), ("right", 1, "left", ("app/core.py",))}
        wait_for(lambda: standing(view()) == both, what="both forecasts in the served view")
        assert view()["conflicts"] == []                  # forecast, not happened

        chromium = need_tool("/usr/bin/chromium")
        from playwright.sync_api import sync_playwright
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector('.alert.forecast[data-task="left"][data-other="right"]')
            assert "Conflict forecast in app/core.py" in page.inner_text('.alert.forecast[data-task="left"]')
            assert page.locator(".alert.conflict").count() == 0      # drawn apart from real conflicts
            assert page.inner_text("#m-forecasts") == "2 forecast now"

            # left merges: its forecast ends with its attempt; right's, about left, is cleared, and
            # right now heads for a conflict with what merged
            run.release("left")
            run.wait_event("merged", "left")
            wait_for(lambda: standing(view()) == {("right", 1, "integration head", ("app/core.py",))},
                     what="right's forecast against the integration head alone")
            page.wait_for_selector('.alert.forecast[data-task="right"][data-other="integration head"]')
            page.wait_for_function("document.querySelectorAll('.alert.forecast').length === 1")

            # right conflicts as forecast, and merges on its retry: nothing stands any more
            code, _, err = run.finish()
            assert code == 0, err
            page.wait_for_selector('body[data-state="finished"]', timeout=60_000)
            assert page.locator(".alert.forecast").count() == 0
            assert page.locator(".alert.conflict").count() == 1
            browser.close()
        final = view()
        assert final["forecasts"] == [] and final["state"] == "finished" and final["mission"]["conflicts"] == 1
        kinds = [(e["kind"], e.get("task"), e.get("other")) for e in run.events()]
        assert ("conflict-forecast-cleared", "right", "left") in kinds
    finally:
        run.stop()
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            server.communicate(timeout=10)
