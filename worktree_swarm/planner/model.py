"""The planner: a model turns a goal and a picture of the repository into a validated plan.

The model must answer through the `submit_plan` tool, whose input schema is the plan; the answer goes
through the same validation as a user's plan file plus the planner's own rules, with one repair round.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx

from worktree_swarm.agents.pricing import cost_usd
from worktree_swarm.agents.registry import DefaultAgent, agent_for_type, default_agent, types_use_default
from worktree_swarm.config import DEFAULT_PLANNER_MODEL, Config, load_config
from worktree_swarm.util.errors import PlanError, UsageError, WswarmError
from worktree_swarm.util.globs import TrackedFiles, patterns_overlap
from worktree_swarm.git.repo import Repo, require_git
from worktree_swarm.plan import Plan, plan_from_data
from worktree_swarm.planner.repo_picture import Picture, take_picture

if TYPE_CHECKING:
    import anthropic

DEFAULT_MAX_TOKENS = 16000
TOOL_NAME = "submit_plan"
SOURCE = "the plan"
PLANNED_TYPES = ("analysis", "frontend", "backend", "testing", "docs", "refactor")
# Not from a user's file, so neither field may appear: the model must not pick commands or agents.
_FORBIDDEN = ("command", "agent")

SYSTEM_PROMPT = """\
You are the planner of wswarm, which runs many coding agents on one git repository at once. Each task \
of your plan is carried out by one agent in a git worktree of its own, starting from the merged work of \
the tasks it depends on; every finished task must pass the repository's quality gate, then it is merged \
into one integration branch. You never write code yourself: you split the goal into tasks.

Rules for a good plan:
- Each task is small enough for one agent in one session: one coherent change to a handful of files, \
with a description precise enough to act on without asking questions.
- `files` lists the repository-relative paths or globs (like `src/api/*.py`) the task will create or \
change. Every task that changes code names its files; only an `analysis` task may list none.
- Add a dependency when a task needs another task's result (an interface, a module, a decision \
recorded by an analysis task). Do not add dependencies that are not needed: independent tasks run in \
parallel.
- Two tasks that would edit the same file must be ordered by a dependency (directly or through other \
tasks): a planned conflict is a wasted agent run.
- Tests and docs for a change can be their own tasks that depend on it, or part of it when small.
- `type` picks the agent's role: {types}.
- `id` is short kebab-case (`add-login-form`), unique, at most 40 characters.
- Do not invent files the picture does not suggest unless the task creates them.

Answer only by calling the `submit_plan` tool with the whole plan."""

REPAIR_TEXT = ("wswarm rejected this plan:\n{problems}\n\nCall submit_plan again with the whole corrected plan "
               "(every task, not only the changed ones).")


class PlannerError(WswarmError):
    """The planner could not produce a plan (API error, refused answer): nothing was created."""


class PlanRefused(PlannerError):
    """The model's plan was still invalid after the repair round."""

    def __init__(self, problems: Sequence[str], saved: Path | None) -> None:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(f"the planner's plan was refused after one repair round: {problems[0]}{more}",
                         hint=f"what came back is in {saved}; edit it and run: wswarm start --plan {saved}"
                         if saved else None)
        self.problems = list(problems)
        self.saved = saved


@dataclass(frozen=True)
class Planned:
    """A validated plan from the model, and what it cost."""

    plan: Plan
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    rounds: int                 # 1, or 2 when the first answer needed the repair round
    default_agent: str | None = None    # the agent wswarm chose for the run, none being configured

    def usage(self) -> dict[str, object]:
        return {"model": self.model, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cost_usd": round(self.cost_usd, 6), "rounds": self.rounds}


# -- the entry point for `wswarm plan` and `wswarm start "GOAL"` -----------------------------------------

def plan_goal(*, cwd: Path, goal: str, base: str = "HEAD", model: str | None = None, max_tokens: int | None = None,
              rejected_path: Path | None = None, agent_cmd: str | None = None, check_agents: bool = False,
              client: anthropic.Anthropic | None = None, notify: Callable[[str], None] = lambda _: None) -> Planned:
    """Validate everything that needs no model (repository, base, config, the key and, for a run, the
    agents), then ask the model. A refused answer is saved to REJECTED_PATH (default: under the state dir).
    The plan carries GOAL."""
    from worktree_swarm.commands.start import config_note, has_uncommitted_work

    if not goal.strip():
        raise UsageError("the goal is empty", hint='say what the swarm should achieve: wswarm plan "add a login page"')
    repo = Repo.discover(cwd)
    require_git(repo.root)
    config = load_config(repo.root)
    sha = repo.resolve_commit(base)
    agent = None
    if check_agents:
        agent = preflight_agents(config, agent_cmd=agent_cmd)
        for line in (agent.note(), config_note(repo.root, config)):
            if line:
                notify(line)
    if client is None:
        client = make_client()
    picture = take_picture(repo, sha, base_ref=base, config=config)
    chosen = model or config.planner.model or DEFAULT_PLANNER_MODEL
    if has_uncommitted_work(repo):
        notify(f"warning: {repo.root} has uncommitted changes; the planner sees only {base} = {sha[:12]}")
    count = len(picture.files)
    notify(f"planning with {chosen} ({count} tracked file{'' if count == 1 else 's'} at {base} = {sha[:12]})")
    saved = rejected_path or repo.state_dir / "planner" / f"rejected-{time.strftime('%Y%m%d-%H%M%S')}.json"
    planned = ask_model(client, goal=goal, picture=picture, model=chosen, task_types=task_types(config),
                        max_tokens=max_tokens or config.planner.max_tokens or DEFAULT_MAX_TOKENS,
                        rejected_path=saved, notify=notify)
    return replace(planned, plan=planned.plan.with_goal(goal.strip()),
                   default_agent=agent.chosen if agent else None)


def make_client() -> anthropic.Anthropic:
    """The SDK client from the environment; refuse clearly when no key is set."""
    if not (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")):
        raise UsageError("the planner needs an Anthropic API key: ANTHROPIC_API_KEY is not set",
                         hint="export ANTHROPIC_API_KEY=..., or write the plan yourself (docs/plan-format.md) "
                              "and run it without a model: wswarm start --plan plan.json --agent-cmd 'COMMAND'")
    import anthropic

    return anthropic.Anthropic()


def preflight_agents(config: Config, *, agent_cmd: str | None) -> DefaultAgent:
    """Every agent a planned task could get (one per task type) exists, before the model is paid;
    with no agent configured, the one wswarm chose."""
    types = sorted({*task_types(config), "general"})
    chosen = default_agent(config, agent_cmd=agent_cmd, needed=types_use_default(config, types))
    for type_ in types:
        agent_for_type(chosen.config, type_, agent_cmd=agent_cmd).check_available()
    return chosen


def task_types(config: Config) -> list[str]:
    return sorted({*PLANNED_TYPES, *config.roles})


# -- the conversation ---------------------------------------------------------------------------------

def plan_schema(types: Sequence[str]) -> dict[str, Any]:
    """The input schema of submit_plan: the task fields a model may set (no command, no agent)."""
    task = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$", "maxLength": 40,
                   "description": "Short kebab-case id, unique in the plan."},
            "type": {"type": "string", "enum": list(types), "description": "The role of the agent."},
            "description": {"type": "string", "description": "What to do, precise enough to act on."},
            "dependencies": {"type": "array", "items": {"type": "string"},
                             "description": "Ids of the tasks whose result this task needs."},
            "files": {"type": "array", "items": {"type": "string"},
                      "description": "Repository-relative paths or globs this task creates or changes."},
            "prompt": {"type": "string", "description": "Optional extra instructions for the agent."},
        },
        "required": ["id", "type", "description", "dependencies", "files"],
        "additionalProperties": False,
    }
    return {"type": "object", "properties": {"tasks": {"type": "array", "minItems": 1, "items": task}},
            "required": ["tasks"], "additionalProperties": False}


def first_message(goal: str, picture: Picture) -> str:
    return (f"<goal>\n{goal.strip()}\n</goal>\n\n<repository>\n{picture.render()}</repository>\n\n"
            f"Plan the goal for this repository and call {TOOL_NAME}.")


@dataclass
class _Spend:
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0

    def add(self, message: Any) -> None:
        usage = message.usage
        cache_write = usage.cache_creation_input_tokens or 0
        cache_read = usage.cache_read_input_tokens or 0
        self.input_tokens += usage.input_tokens + cache_write + cache_read
        self.output_tokens += usage.output_tokens
        self.cost += cost_usd(message.model or self.model, input_tokens=usage.input_tokens,
                              output_tokens=usage.output_tokens, cache_write_tokens=cache_write,
                              cache_read_tokens=cache_read)


def ask_model(client: anthropic.Anthropic, *, goal: str, picture: Picture, model: str, task_types: Sequence[str],
              max_tokens: int, rejected_path: Path, notify: Callable[[str], None] = lambda _: None) -> Planned:
    """Two rounds at most: the plan, and one repair with the problems as an error tool_result."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": first_message(goal, picture)}]
    spend = _Spend(model)
    problems: list[str] = []
    answer: object = None
    for round_ in (1, 2):
        message = _send(client, model=model, max_tokens=max_tokens, task_types=task_types, messages=messages)
        spend.add(message)
        call = next((b for b in message.content if b.type == "tool_use" and b.name == TOOL_NAME), None)
        if message.stop_reason == "max_tokens":
            raise PlannerError(f"the planner's answer was cut off at max_tokens = {max_tokens}",
                               hint="raise it with --max-tokens N or [planner] max_tokens in wswarm.toml")
        if call is None:
            answer = "\n".join(b.text for b in message.content if b.type == "text")
            problems = [f"the answer did not call {TOOL_NAME}"]
        else:
            answer = call.input
            try:
                plan = check_planned(answer, files=[path for path, _ in picture.files])
            except PlanError as exc:
                # The hints ("did you mean 'x'?", "remove one of these dependencies") help the model too.
                problems = [exc.message.removeprefix(f"{SOURCE}: ") + (f" ({exc.hint})" if exc.hint else "")]
            else:
                return Planned(plan, model=message.model or model, input_tokens=spend.input_tokens,
                               output_tokens=spend.output_tokens, cost_usd=spend.cost, rounds=round_)
        if round_ == 2:
            break
        notify(f"the plan broke a rule ({problems[0]}); asking the model to repair it")
        messages.append({"role": "assistant", "content": [_param(b) for b in message.content]})
        feedback = REPAIR_TEXT.format(problems="\n".join(f"- {p}" for p in problems))
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "is_error": True, "content": feedback}
            if call is not None else {"type": "text", "text": feedback}]})
    raise PlanRefused(problems, _save_rejected(rejected_path, answer))


def _send(client: anthropic.Anthropic, *, model: str, max_tokens: int, task_types: Sequence[str],
          messages: list[dict[str, Any]]) -> Any:
    import anthropic
    import httpx2

    # Streaming: the SDK refuses a non-streaming request whose max_tokens could outlast its timeout.
    try:
        with client.messages.stream(
                model=model, max_tokens=max_tokens, messages=messages,  # type: ignore[arg-type]
                system=SYSTEM_PROMPT.format(types=", ".join(task_types)),
                tools=[{"name": TOOL_NAME, "description": "Submit the plan: the tasks and their dependencies.",
                        "input_schema": plan_schema(task_types)}],
                tool_choice={"type": "tool", "name": TOOL_NAME}) as stream:
            if next(iter(stream), None) is None:     # the SDK would fail an assertion on an empty reply
                raise PlannerError("the Messages API sent an empty reply to the planner's request",
                                   hint="try again; check ANTHROPIC_BASE_URL if you set it")
            reply = stream.get_final_message()
    except httpx2.TransportError as exc:       # the SDK does not wrap a reply that breaks off mid-stream
        raise PlannerError(f"the Messages API reply to the planner broke off: {exc or type(exc).__name__}",
                           hint="try again; the API or the network failed mid-reply") from None
    except anthropic.APIStatusError as exc:
        raise api_error(exc.status_code, exc.body, exc.message) from None
    except anthropic.APIConnectionError as exc:
        raise PlannerError(f"cannot reach the Messages API at {client.base_url}: {exc}",
                           hint="check the network, or ANTHROPIC_BASE_URL if you set it") from None
    except anthropic.APIError as exc:  # e.g. an error event in the middle of the stream
        raise PlannerError(f"the Messages API failed during the planner's request: {exc}") from None
    if reply.stop_reason is None:
        raise PlannerError("the Messages API reply to the planner broke off before its end",
                           hint="try again; the API or the network failed mid-reply")
    return reply


def api_error(status: int, body: object, message: str) -> PlannerError:
    """One line from an API error response: status, error type and message."""
    error = body.get("error") if isinstance(body, Mapping) else None
    kind = error.get("type") if isinstance(error, Mapping) else None
    text = error.get("message") if isinstance(error, Mapping) else None
    hint = ("check ANTHROPIC_API_KEY" if status in (401, 403)
            else "the API is busy or failing; try again later" if status in (429, 529) or status >= 500
            else "check --model and --max-tokens" if status in (400, 404) else None)
    return PlannerError(f"the Messages API refused the planner's request: {status} {kind or 'error'}: "
                        f"{text or message}", hint=hint)


def _param(block: Any) -> dict[str, Any]:
    """A response content block as a request content block (only the fields the API accepts back)."""
    if block.type == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    if block.type == "text":
        return {"type": "text", "text": block.text}
    return dict(block.model_dump(exclude_none=True))


def _save_rejected(path: Path, answer: object) -> Path | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = answer if isinstance(answer, str) else json.dumps(answer, indent=2, ensure_ascii=False)
        path.write_text(text + "\n", encoding="utf-8")
    except OSError:
        return None
    return path


# -- the planner's own rules, on top of plan_from_data ---------------------------------------------------

def check_planned(data: object, *, files: Collection[str] = ()) -> Plan:
    """The model's answer as a Plan: plan_from_data's validation (commands refused), then no `agent`,
    files declared, and tasks that may edit the same files ordered; every problem in one PlanError."""
    if isinstance(data, Mapping) and isinstance(data.get("tasks"), list):
        for item in data["tasks"]:
            if isinstance(item, Mapping):
                for name in _FORBIDDEN:
                    if item.get(name) is not None:
                        raise PlanError(f"{SOURCE}: task {str(item.get('id'))!r} sets {name!r}, which a "
                                        "generated plan may not")
    plan = plan_from_data(data, source=SOURCE, allow_command=False)
    problems = [f"task {t.id!r} declares no files: list the paths or globs it changes"
                for t in plan if not t.files and t.type != "analysis"]
    problems += [f"tasks {a!r} and {b!r} may both edit {where} but neither depends on the other: make one "
                 "depend on the other (a planned conflict is a wasted agent run)"
                 for a, b, where in unordered_overlaps(plan, files)]
    if problems:
        raise PlanError("; ".join(problems))
    return plan


def unordered_overlaps(plan: Plan, files: Collection[str] = ()) -> list[tuple[str, str, str]]:
    """(task, task, what both may edit) for every pair whose file patterns overlap while no
    dependency path orders them."""
    # One reachability pass and one scan of the tracked files per pattern: a pairwise has_path and
    # a scan per pair of patterns took minutes on a monorepo.
    after = {tid: networkx.descendants(plan.graph, tid) for tid in plan.graph}
    tracked = TrackedFiles(files)
    found: list[tuple[str, str, str]] = []
    tasks = list(plan)
    for i, a in enumerate(tasks):
        for b in tasks[i + 1:]:
            if b.id in after[a.id] or a.id in after[b.id]:
                continue
            where = next((w for p in a.files for q in b.files if (w := patterns_overlap(p, q, tracked))), None)
            if where:
                found.append((a.id, b.id, where))
    return found


# -- files ---------------------------------------------------------------------------------------------

def plan_to_file(*, cwd: Path, goal: str, output: Path | None, force: bool = False, base: str = "HEAD",
                 model: str | None = None, max_tokens: int | None = None, client: anthropic.Anthropic | None = None,
                 notify: Callable[[str], None] = lambda _: None) -> Planned:
    """`wswarm plan`: plan GOAL and write it to OUTPUT (`{"goal": GOAL, "tasks": [...]}`); a refused
    answer goes next to it as NAME.rejected.json. An existing OUTPUT is refused before the model is asked."""
    rejected = None
    if output is not None:
        output = cwd / output
        if output.suffix.lower() == ".toml":
            raise UsageError(f"{output}: the planner writes JSON", hint="name the output file .json")
        if output.exists() and not force:
            raise UsageError(f"{output} already exists", hint="pass --force to overwrite it, or choose another -o")
        if not output.parent.is_dir():
            raise UsageError(f"{output.parent} is not a directory", hint="create it first, or choose another -o")
        rejected = output.with_name(f"{output.stem}.rejected.json")
    planned = plan_goal(cwd=cwd, goal=goal, base=base, model=model, max_tokens=max_tokens, rejected_path=rejected,
                        client=client, notify=notify)
    if output is not None:
        _write(output, planned.plan.to_file_json() + "\n")
    return planned


def save_plan(*, cwd: Path, plan: Plan) -> Path:
    """Keep a plan the user did not run (it was paid for) under the state dir; return its path."""
    path = Repo.discover(cwd).state_dir / "planner" / f"plan-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, plan.to_file_json() + "\n")
    return path


def _write(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(text, encoding="utf-8")
        temp.replace(path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
