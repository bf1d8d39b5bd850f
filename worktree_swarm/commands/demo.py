"""`wswarm demo`: a whole swarm on a throwaway sample repository, with scripted agents."""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.util import proc
from worktree_swarm.util.errors import UsageError
from worktree_swarm.commands.start import StartOptions, start
from worktree_swarm.swarm.session import Notify, View

AGENT = Path(__file__).parent.parent / "demo_agents" / "agent.py"

_COMPONENT = '''"""The {name} component."""


class {cls}:
    def __init__(self, label: str) -> None:
        self.label = label

    def render(self) -> str:
        return f"<{name}>{{self.label}}</{name}>"
'''

_TEST = '''import unittest

from shop.components.{name} import {cls}


class {cls}Test(unittest.TestCase):
    def test_render(self) -> None:
        self.assertEqual({cls}("ok").render(), "<{name}>ok</{name}>")
'''

PLAN = [
    {"id": "analyze-1", "type": "analysis", "description": "Scan all components and create a refactoring plan",
     "dependencies": [], "files": ["docs/refactor-plan.md"]},
    {"id": "refactor-buttons", "type": "frontend", "description": "Convert the Button component to a render function",
     "dependencies": ["analyze-1"], "files": ["shop/components/button.py", "shop/components/__init__.py"]},
    {"id": "refactor-forms", "type": "frontend", "description": "Convert the Form component to a render function",
     "dependencies": ["analyze-1"], "files": ["shop/components/form.py", "shop/components/__init__.py"]},
    {"id": "update-tests-buttons", "type": "testing", "description": "Test the Button render function",
     "dependencies": ["refactor-buttons"], "files": ["tests/test_button*.py"]},
    {"id": "update-tests-forms", "type": "testing", "description": "Test the Form render function",
     "dependencies": ["refactor-forms"], "files": ["tests/test_form*.py"]},
    {"id": "update-docs", "type": "docs", "description": "Update the component documentation",
     "dependencies": ["refactor-buttons", "refactor-forms"], "files": ["docs/components.md"]},
]


@dataclass(frozen=True)
class DemoResult:
    repo: Path
    integration_branch: str
    pr_body: str
    exit_code: int


def build_sample(root: Path) -> Path:
    """A small Python package with two class components, unittest tests and a wswarm.toml."""
    files = {
        "README.md": "# shop\n\nA tiny component library (the wswarm demo's sample).\n",
        "shop/__init__.py": "",
        "shop/components/__init__.py": '"""Components."""\n\nFUNCTIONAL = []\n',
        "docs/components.md": "# Components\n\nClass components: `Button`, `Form`.\n",
        "tests/__init__.py": "",
    }
    for name in ("button", "form"):
        files[f"shop/components/{name}.py"] = _COMPONENT.format(name=name, cls=name.title())
        files[f"tests/test_{name}.py"] = _TEST.format(name=name, cls=name.title())
    python = shlex.quote(sys.executable)
    files["wswarm.toml"] = (
        "[agents]\n"
        f"command = {json.dumps(f'{python} {shlex.quote(str(AGENT))}')}\n"
        "concurrency = 2\n\n"
        "[[gate.checks]]\nname = \"unittest\"\nkind = \"tests\"\n"
        f"run = {json.dumps(f'{python} -m unittest discover -s tests -t . -q')}\n"
        "timeout = 120\n")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "plan.json").write_text(json.dumps(PLAN, indent=2) + "\n", encoding="utf-8")
    proc.git("init", "-q", "-b", "main", cwd=root)
    # A throwaway repository: give it an identity so the demo works where git has none configured.
    proc.git("config", "user.name", "wswarm demo", cwd=root)
    proc.git("config", "user.email", "demo@wswarm.invalid", cwd=root)
    proc.git("add", "-A", cwd=root)
    proc.git("commit", "-q", "-m", "shop: class components", cwd=root)
    return root


def run_demo(*, directory: Path | None, notify: Notify, view: View | None) -> DemoResult:
    if directory is not None:
        if directory.exists() and any(directory.iterdir()):
            raise UsageError(f"{directory} is not empty", hint="give --dir a new or empty folder")
        directory.mkdir(parents=True, exist_ok=True)
        root = directory.resolve()
    else:
        root = Path(tempfile.mkdtemp(prefix="wswarm-demo-"))
    build_sample(root)
    notify(f"sample repository: {root}")
    result = start(cwd=root, options=StartOptions(plan_path=root / "plan.json", title="convert components "
                                                  "to render functions"), notify=notify, view=view)
    return DemoResult(root, result.integration_branch, result.pr_path.read_text(encoding="utf-8"),
                      result.exit_code)
