"""The demo's scripted agent: a real process that edits the sample repository like a coding agent.

It follows the command-agent contract: the task arrives in WSWARM_* variables and files, the
working directory is the task's worktree, and exit 0 means done.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path


def say(line: str) -> None:
    print(line, flush=True)
    time.sleep(0.3)


def edit(path: str, old: str, new: str) -> None:
    text = Path(path).read_text(encoding="utf-8")
    if old not in text:
        raise SystemExit(f"expected text not found in {path}: {old!r}")
    Path(path).write_text(text.replace(old, new, 1), encoding="utf-8")
    say(f"edited {path}")


def register(name: str) -> None:
    """Both refactors record themselves on the same line: the swarm's planned collision."""
    path = Path("shop/components/__init__.py")
    text = path.read_text(encoding="utf-8")
    match = re.search(r"^FUNCTIONAL = \[(.*)\]$", text, re.M)
    assert match, "FUNCTIONAL list missing"
    names = [n.strip().strip('"') for n in match.group(1).split(",") if n.strip()]
    names.append(name)
    line = "FUNCTIONAL = [" + ", ".join(f'"{n}"' for n in sorted(set(names))) + "]"
    path.write_text(text[:match.start()] + line + text[match.end():], encoding="utf-8")
    say(f"registered {name} in {path}")


def analyze() -> None:
    say("scanning shop/components")
    found = sorted(p.stem for p in Path("shop/components").glob("*.py") if p.stem != "__init__")
    say(f"found {len(found)} class components: {', '.join(found)}")
    Path("docs/refactor-plan.md").write_text(
        "# Refactoring plan\n\n" + "".join(f"- `{c}`: convert the class to a render function, keep the "
                                           "class as a thin wrapper\n" for c in found), encoding="utf-8")
    say("wrote docs/refactor-plan.md")


def refactor(name: str, delay: float) -> None:
    say(f"reading shop/components/{name}.py")
    time.sleep(delay)
    edit(f"shop/components/{name}.py", "class ", f"def render_{name}(label: str) -> str:\n"
         f"    return f\"<{name}>{{label}}</{name}>\"\n\n\nclass ")
    edit(f"shop/components/{name}.py", f"        return f\"<{name}>{{self.label}}</{name}>\"",
         f"        return render_{name}(self.label)")
    register(name)


def update_tests(name: str) -> None:
    attempt = int(os.environ["WSWARM_ATTEMPT"])
    feedback = os.environ.get("WSWARM_FEEDBACK")
    expected = f"<{name}>ok</{name}>"
    if name == "form" and feedback is None:
        expected = f"<{name}>ok</{name.upper()}>"   # a slip the gate will catch
        say("writing tests for the new render function")
    elif feedback:
        say(f"attempt {attempt}: reading the gate's feedback")
        say(Path(feedback).read_text(encoding="utf-8").splitlines()[0])
        say("fixing the expected markup")
    task = json.loads(Path(os.environ["WSWARM_TASK_JSON"]).read_text(encoding="utf-8"))
    say("dependencies done: " + ", ".join(d["id"] for d in task["dependencies"]))
    Path(f"tests/test_{name}_render.py").write_text(
        "import unittest\n\n"
        f"from shop.components.{name} import render_{name}\n\n\n"
        f"class Render{name.title()}Test(unittest.TestCase):\n"
        f"    def test_render(self) -> None:\n"
        f"        self.assertEqual(render_{name}(\"ok\"), \"{expected}\")\n", encoding="utf-8")
    say(f"wrote tests/test_{name}_render.py")


def update_docs() -> None:
    say("documenting the render functions")
    Path("docs/components.md").write_text(
        "# Components\n\nEvery component is a render function; the classes remain as thin wrappers.\n\n"
        "- `render_button(label)` → `<button>label</button>`\n"
        "- `render_form(label)` → `<form>label</form>`\n", encoding="utf-8")
    say("wrote docs/components.md")


def main() -> int:
    task = os.environ["WSWARM_TASK_ID"]
    say(f"{task}: attempt {os.environ['WSWARM_ATTEMPT']}")
    actions = {
        "analyze-1": analyze,
        "refactor-buttons": lambda: refactor("button", 0.2),
        "refactor-forms": lambda: refactor("form", 1.5),
        "update-tests-buttons": lambda: update_tests("button"),
        "update-tests-forms": lambda: update_tests("form"),
        "update-docs": update_docs,
    }
    if task not in actions:
        print(f"the demo agent does not know task {task!r}", file=sys.stderr)
        return 1
    actions[task]()
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
