"""Plan loading and validation: every rejection names its culprit; the DAG is right."""

from __future__ import annotations

import json
import pathlib

import networkx
import pytest

from worktree_swarm.util.errors import EXIT_USAGE, PlanError, UsageError
from worktree_swarm.plan import Plan, Task, load_plan, parse_plan, plan_from_data, validate_task_id
from worktree_swarm.util.types import TaskId

# The meta-agent's plan from the ORIGIN article, verbatim in shape.
ORIGIN_PLAN: list[dict[str, object]] = [
    {"id": "analyze-1", "type": "analysis", "description": "Scan all components and create refactoring plan",
     "dependencies": [], "files": []},
    {"id": "refactor-buttons", "type": "frontend", "description": "Convert all Button components to functional",
     "dependencies": ["analyze-1"], "files": ["components/Button/*.tsx"]},
    {"id": "refactor-forms", "type": "frontend", "description": "Convert all Form components to functional",
     "dependencies": ["analyze-1"], "files": ["components/Form/*.tsx"]},
    {"id": "update-tests-buttons", "type": "testing", "description": "Update Button component tests",
     "dependencies": ["refactor-buttons"], "files": ["__tests__/Button/*.test.tsx"]},
    {"id": "update-tests-forms", "type": "testing", "description": "Update Form component tests",
     "dependencies": ["refactor-forms"], "files": ["__tests__/Form/*.test.tsx"]},
    {"id": "update-docs", "type": "docs", "description": "Update component documentation",
     "dependencies": ["refactor-buttons", "refactor-forms"], "files": ["docs/components/*.md"]},
]


def task(task_id: str, *deps: str, **extra: object) -> dict[str, object]:
    """A minimal valid task object."""
    return {"id": task_id, "description": f"do {task_id}", "dependencies": list(deps), **extra}


def plan_of(*tasks: dict[str, object], allow_command: bool = True) -> Plan:
    return plan_from_data(list(tasks), source="plan.json", allow_command=allow_command)


def rejection(data: object, allow_command: bool = True) -> PlanError:
    with pytest.raises(PlanError) as info:
        plan_from_data(data, source="plan.json", allow_command=allow_command)
    assert "\n" not in info.value.message
    return info.value


def test_origin_plan_loads_with_the_expected_dag(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(ORIGIN_PLAN))
    plan = load_plan(path)
    assert plan.ids() == [t["id"] for t in ORIGIN_PLAN]
    assert len(plan) == 6 and [t.id for t in plan] == plan.ids()
    assert plan["refactor-buttons"].files == ("components/Button/*.tsx",)
    assert plan["update-docs"].dependencies == ("refactor-buttons", "refactor-forms")
    assert set(plan.graph.edges) == {
        ("analyze-1", "refactor-buttons"), ("analyze-1", "refactor-forms"),
        ("refactor-buttons", "update-tests-buttons"), ("refactor-forms", "update-tests-forms"),
        ("refactor-buttons", "update-docs"), ("refactor-forms", "update-docs"),
    }
    assert plan.priority() == {"analyze-1": 3, "refactor-buttons": 2, "refactor-forms": 2,
                               "update-tests-buttons": 1, "update-tests-forms": 1, "update-docs": 1}
    assert plan.dependents("refactor-forms") == {"update-tests-forms", "update-docs"}
    assert plan.dependents("analyze-1") == set(plan.ids()) - {"analyze-1"}
    assert plan.topological_order() == ["analyze-1", "refactor-buttons", "refactor-forms",
                                        "update-tests-buttons", "update-tests-forms", "update-docs"]


def test_defaults_and_normalisation() -> None:
    plan = plan_of({"id": "a", "description": "  first  "}, task("b", "a", "a", command=None))
    a = plan["a"]
    assert a == Task(id=TaskId("a"), type="general", description="first")
    assert (a.dependencies, a.files, a.command, a.agent, a.prompt) == ((), (), None, None, None)
    assert plan["b"].dependencies == ("a",)
    assert a.to_dict() == {"id": "a", "type": "general", "description": "first", "dependencies": [], "files": []}


def test_optional_fields_are_kept() -> None:
    plan = plan_of(task("a", type="backend", files=["src/*.py"], command="make", agent="claude", prompt="be brief"))
    t = plan["a"]
    assert (t.type, t.files, t.command, t.agent, t.prompt) == ("backend", ("src/*.py",), "make", "claude", "be brief")
    assert t.to_dict()["command"] == "make"


def test_tasks_object_and_toml_and_no_extension(tmp_path: pathlib.Path) -> None:
    wrapped = plan_from_data({"tasks": ORIGIN_PLAN}, source="p")
    toml = tmp_path / "plan.toml"
    toml.write_text('[[tasks]]\nid = "a"\ndescription = "first"\n\n'
                    '[[tasks]]\nid = "b"\ndescription = "second"\ndependencies = ["a"]\nfiles = ["x/*.md"]\n')
    from_toml = load_plan(toml)
    assert from_toml.ids() == ["a", "b"] and from_toml["b"].files == ("x/*.md",)
    bare_json = tmp_path / "PLAN"
    bare_json.write_text(json.dumps({"tasks": ORIGIN_PLAN}))
    assert load_plan(bare_json).ids() == wrapped.ids()
    bare_toml = tmp_path / "plan.txt"
    bare_toml.write_text(toml.read_text())
    assert load_plan(bare_toml).ids() == ["a", "b"]
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(ORIGIN_PLAN).encode())
    assert len(load_plan(bom)) == 6


def test_to_json_round_trips() -> None:
    plan = plan_of(*ORIGIN_PLAN, task("last", "update-docs", prompt="ünïcode", agent="x"))
    text = plan.to_json()
    assert text.startswith("[\n  {")
    again = parse_plan(text, fmt="json", source="again.json")
    assert again.tasks == plan.tasks
    assert "command" not in json.loads(text)[0]


def test_the_goal_is_read_and_written_with_the_tasks(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"goal": " add a /health endpoint\n", "tasks": ORIGIN_PLAN}))
    plan = load_plan(path)
    assert plan.goal == "add a /health endpoint"
    assert json.loads(plan.to_file_json()) == {"goal": "add a /health endpoint", "tasks": json.loads(plan.to_json())}
    assert parse_plan(plan.to_file_json(), fmt="json", source="again").goal == plan.goal
    toml = tmp_path / "plan.toml"
    toml.write_text('goal = "ship it"\n\n[[tasks]]\nid = "a"\ndescription = "x"\n')
    assert load_plan(toml).goal == "ship it"
    # Without a goal: the bare array, as before; the state keeps the tasks alone either way.
    bare = plan_of(task("a"))
    assert bare.goal is None and bare.to_file_json() == bare.to_json()
    assert bare.with_goal("g").goal == "g" and bare.with_goal("g").tasks == bare.tasks


@pytest.mark.parametrize(("tasks", "width"), [
    ([task("a")], 1),
    ([task("a"), task("b", "a"), task("c", "b")], 1),
    ([task("a"), task("b"), task("c")], 3),
    (ORIGIN_PLAN, 3),          # the two tests and the docs
    # An antichain not found level by level: b and c are on different levels.
    ([task("a"), task("b", "a"), task("c"), task("d", "c"), task("e", "d")], 2),
    ([task("top"), *[task(f"m{i}", "top") for i in range(5)], task("bottom", *[f"m{i}" for i in range(5)])], 5),
])
def test_width_is_the_most_tasks_that_can_run_at_once(tasks: list[dict[str, object]], width: int) -> None:
    plan = plan_of(*tasks)
    assert plan.width() == width
    antichains = (set(c) for c in networkx.antichains(plan.graph))
    assert width == max(len(c) for c in antichains)


def test_width_among_some_tasks_counts_order_through_the_others() -> None:
    # a → m → b: with m merged, a and b still cannot run side by side (resume never reruns a).
    plan = plan_of(task("a"), task("m", "a"), task("b", "m"), task("c"))
    assert plan.width(["a", "b"]) == 1
    assert plan.width(["b", "c"]) == 2


def test_width_of_a_long_chain_is_quick() -> None:
    chain = plan_of(task("t0"), *[task(f"t{i}", f"t{i - 1}") for i in range(1, 1000)])
    assert chain.width() == 1


def test_priority_on_a_chain_and_a_diamond() -> None:
    assert plan_of(task("a"), task("b", "a"), task("c", "b")).priority() == {"a": 3, "b": 2, "c": 1}
    diamond = plan_of(task("top"), task("left", "top"), task("right", "top"), task("bottom", "left", "right"))
    assert diamond.priority() == {"top": 3, "left": 2, "right": 2, "bottom": 1}
    assert plan_of(task("alone")).priority() == {"alone": 1}


def test_topological_order_breaks_ties_by_file_order() -> None:
    plan = plan_of(task("z"), task("y", "x"), task("x"), task("w"))
    assert plan.topological_order() == ["z", "x", "y", "w"]
    assert plan_of(task("w"), task("x"), task("z"), task("y", "x")).topological_order() == ["w", "x", "z", "y"]
    assert [plan.topological_order() for _ in range(5)] == [plan.topological_order()] * 5


def test_plan_is_immutable_and_lookups() -> None:
    plan = plan_of(task("a"), task("b", "a"))
    with pytest.raises(networkx.NetworkXError):
        plan.graph.add_edge("b", "a")
    with pytest.raises(AttributeError):
        plan.tasks = ()  # type: ignore[misc]
    with pytest.raises(KeyError):
        plan["nope"]
    with pytest.raises(KeyError):
        plan.dependents("nope")
    assert "a" in plan and "nope" not in plan and plan["a"] in plan


def test_allow_command_false_rejects_command() -> None:
    error = rejection([task("a", command="rm -rf /")], allow_command=False)
    assert "'a'" in error.message and "command" in error.message and error.hint
    assert plan_of(task("a", command=None), allow_command=False)["a"].command is None


@pytest.mark.parametrize(("data", "expected"), [
    ([], "no tasks"),
    ({"tasks": []}, "no tasks"),
    ({}, "no tasks"),
    ({"tasks": [task("a")], "version": 1, "name": "x"}, "unknown top-level keys 'name', 'version'"),
    ({"tasks": "a"}, "'tasks' must be an array"),
    ({"goal": 3, "tasks": [task("a")]}, "'goal' must be a string, got a number"),
    ({"goal": "  ", "tasks": [task("a")]}, "'goal' is empty"),
    ({"goal": "a\x1b[2Jb", "tasks": [task("a")]}, "'goal' contains the control character"),
    ("a plan", "must be an array of task objects, got a string"),
    (None, "got null"),
    ([task(f"t{i}") for i in range(1001)], "1001 tasks, more than 1000"),
    (["a"], "task #1 must be an object, got a string"),
    ([task("a"), {"description": "x"}], "task #2 has no 'id'"),
    ([{"id": None, "description": "x"}], "task #1: 'id' must be a string, got null"),
    ([{"id": 7, "description": "x"}], "task #1: 'id' must be a string, got a number"),
    ([{"id": " ", "description": "x"}], "task #1: 'id' is empty"),
    ([{"id": "a"}], "task 'a' has no 'description'"),
    ([{"id": "a", "description": None}], "task 'a': 'description' must be a string, got null"),
    ([{"id": "a", "description": True}], "task 'a': 'description' must be a string, got a boolean"),
    ([{"id": "a", "description": " \n"}], "task 'a': 'description' is empty"),
    ([task("a", type=3)], "task 'a': 'type' must be a string, got a number"),
    ([task("a", prompt=["x"])], "task 'a': 'prompt' must be a string, got an array"),
    ([task("a", agent={"x": 1})], "task 'a': 'agent' must be a string, got an object"),
    ([task("a", command="")], "task 'a': 'command' is empty"),
    ([{"id": "a", "description": "x", "dependencies": "b"}], "task 'a': 'dependencies' must be an array of strings"),
    ([{"id": "a", "description": "x", "dependencies": [1]}], "'dependencies' must be an array of strings, item 1"),
    ([task("a", files="*.py")], "task 'a': 'files' must be an array of strings, got a string"),
    ([task("a", files=["ok", False])], "'files' must be an array of strings, item 2 is a boolean"),
    ([task("a", files=[""])], "task 'a': file pattern '' is empty"),
    ([task("a", files=["/etc/*"])], "file pattern '/etc/*' is absolute"),
    ([task("a", files=["C:\\x"])], "is absolute"),
    ([task("a", files=["src/../../x"])], "file pattern 'src/../../x' contains a '..' component"),
    ([task("a", files=["a\0b"])], "contains a NUL"),
    ([task("a", zeta=1, alpha=2)], "task 'a' has unknown fields 'alpha', 'zeta'"),
    ([task("a", depends_on=["b"])], "task 'a' has unknown field 'depends_on'"),
    ([task("x"), task("x")], "duplicate task id 'x'"),
    ([task("foo"), task("Foo")], "duplicate task id 'Foo' (same as 'foo' ignoring case)"),
    ([task("a"), task("b", "x")], "task 'b' depends on unknown task 'x'"),
    ([task("a", "a")], "the plan has a cycle: a → a"),
    ([task("a", "c"), task("b", "a"), task("c", "b")], "the plan has a cycle: a → b → c → a"),
    ([task("a b")], "task id 'a b' cannot be part of a git branch name"),
    ([task("a..b")], "task id 'a..b' cannot be part of a git branch name"),
    ([task("x" * 101)], "longer than 100 characters"),
    ([task("a\nb")], "task id 'a\\nb' cannot be part of a git branch name: it contains whitespace"),
    ([task("caf\u00e9"), task("CAFE\u0301")], "same as 'café' ignoring case"),
])
def test_bad_plans_are_rejected_naming_the_culprit(data: object, expected: str) -> None:
    error = rejection(data)
    assert error.message.startswith("plan.json: ")
    assert expected in error.message
    assert isinstance(error, UsageError) and error.exit_code == EXIT_USAGE


def test_unknown_dependency_hint_suggests_a_close_id() -> None:
    assert rejection([task("analyze-1"), task("b", "analyse-1")]).hint == "did you mean 'analyze-1'?"


GOOD_IDS = ["analyze-1", "refactor/buttons", "a.b", "UPPER_case", "ünïcode-ok", "50%", "a@b"]


@pytest.mark.parametrize("task_id", GOOD_IDS)
def test_good_task_ids(task_id: str) -> None:
    assert validate_task_id(task_id) is None


@pytest.mark.parametrize("task_id", [
    "", "a..b", "-x", "x.lock", "a/b.lock", "a b", "a\tb", "a:b", "a\nb", ".hidden", "a/.b", "a.", "a/", "/a",
    "a//b", "@", "a@{1}", "a~1", "a^", "a?", "a*", "a[b", "a\\b", "a\x7f", "a\u200bb", "x" * 101,
])
def test_bad_task_ids(task_id: str) -> None:
    assert validate_task_id(task_id)


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("plan.json", "[{\n  \"id\": \"a\",,}]", "not valid JSON: Expecting property name enclosed in double quotes "
                                             "(line 2, column 13)"),
    ("plan.json", '[{"id": "a", "id": "b", "description": "x"}]', "key 'id' appears twice"),
    ("plan.toml", "[[tasks]]\nid = \n", "not valid TOML: Invalid value (at line 2, column 6)"),
    ("plan.yaml", "- id: a\n", "neither valid JSON (Expecting value (line 1, column 1)) nor valid TOML"),
    ("plan.json", "[" * 100_000, "nested too deeply"),
    ("plan.toml", "a = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
])
def test_unparseable_files(tmp_path: pathlib.Path, name: str, content: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert info.value.message.startswith(f"{path}: ")
    assert expected in info.value.message


def test_unreadable_files(tmp_path: pathlib.Path) -> None:
    with pytest.raises(PlanError, match="missing.json: cannot read"):
        load_plan(tmp_path / "missing.json")
    with pytest.raises(PlanError, match="cannot read"):
        load_plan(tmp_path)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'[{"id": "caf\xe9", "description": "x"}]')
    with pytest.raises(PlanError, match="latin1.json: the plan file is not UTF-8"):
        load_plan(latin1)
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * (5 * 1024 * 1024 + 1))
    with pytest.raises(PlanError, match="huge.json: the plan file is larger than 5 MB"):
        load_plan(huge)


def test_plan_constructed_directly_is_validated_too() -> None:
    with pytest.raises(PlanError, match="x: task 'b' depends on unknown task 'a'"):
        Plan([Task(id=TaskId("b"), type="general", description="d", dependencies=(TaskId("a"),))], source="x")


@pytest.mark.parametrize("seed", range(40))
def test_the_plans_graph_walks_agree_with_networkx(seed: int) -> None:
    """Topological order (file order among ready tasks), dependents, priorities and cycle detection,
    against networkx on random plans, some with a cycle."""
    import random

    rng = random.Random(seed)
    n = rng.randint(1, 30)
    ids = [f"t{i}" for i in rng.sample(range(100), n)]
    deps = {tid: sorted(rng.sample(ids[:i], rng.randint(0, min(i, 3)))) for i, tid in enumerate(ids)}
    if seed % 4 == 0 and n > 1:             # a back edge: a cycle
        a, b = sorted(rng.sample(range(n), 2))
        deps[ids[a]].append(ids[b])
    graph = networkx.DiGraph()
    graph.add_nodes_from(ids)
    graph.add_edges_from((d, tid) for tid, ds in deps.items() for d in ds)
    tasks = [Task(id=TaskId(tid), type="t", description="x", dependencies=tuple(TaskId(d) for d in deps[tid]))
             for tid in ids]
    if not networkx.is_directed_acyclic_graph(graph):
        with pytest.raises(PlanError, match="the plan has a cycle: ") as refused:
            Plan(tasks)
        cycle = refused.value.args[0].split("cycle: ")[1].split(" → ")
        assert cycle[0] == cycle[-1] and all(graph.has_edge(a, b) for a, b in zip(cycle, cycle[1:]))
        return
    plan = Plan(tasks)
    index = {tid: i for i, tid in enumerate(ids)}
    assert plan.topological_order() == list(networkx.lexicographical_topological_sort(graph, key=index.__getitem__))
    for tid in ids:
        assert plan.dependents(tid) == networkx.descendants(graph, tid)
    # Every task below TID is reachable from it, so the longest path of that part starts at TID.
    assert plan.priority() == {tid: 1 + networkx.dag_longest_path_length(
        graph.subgraph({tid} | networkx.descendants(graph, tid))) for tid in ids}
    assert set(plan.graph.edges) == set(graph.edges)
