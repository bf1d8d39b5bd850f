"""What the typer commands in `cli.py` are built with: the command classes that print usage as the docs
write it, the options and arguments several commands share, and `call`, which turns a core function's
errors into one line and an exit code.

Loaded with `cli.py` (never on the fast path of `__main__`); it imports nothing heavy."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from worktree_swarm import output

if TYPE_CHECKING:
    from rich.console import Console

    from worktree_swarm.store.run_store import RunStore

T = TypeVar("T")
_REQUIRED = re.compile(r"^\{(.+)\}(\.\.\.)?$")

# The options and arguments several commands share, worded once.
RunArg = Annotated[str | None, typer.Argument(metavar="RUN", help="Default: the newest run.")]
ModelOpt = Annotated[str | None, typer.Option(help="The planner's model.")]
MaxTokensOpt = Annotated[int | None, typer.Option(min=256, help="The planner's reply limit in tokens.")]


def _usage(pieces: list[str]) -> list[str]:
    """Usage lines as the docs write them: `wswarm logs [OPTIONS] TASK`, not typer's `{task}`."""
    return [_REQUIRED.sub(r"\1\2", piece) for piece in pieces]


def _untyped_flags(params: list[Any]) -> None:
    """A flag takes no value: no `<bool>` beside --help, --version, --yes."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class Command(TyperCommand):
    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return _usage(super().collect_usage_pieces(ctx))

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _untyped_flags(self.get_params(ctx))
        super().format_help(ctx, formatter)


class Group(TyperGroup):
    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return _usage(super().collect_usage_pieces(ctx))

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _untyped_flags(self.get_params(ctx))
        super().format_help(ctx, formatter)


def call(fn: Callable[[], T]) -> T:
    """Run a core function; expected errors become one line, a hint and their exit code; a bug keeps
    its whole traceback in a crash log and shows one line."""
    try:
        return fn()
    except (Exception, KeyboardInterrupt) as exc:
        raise typer.Exit(output.failed(exc)) from None


def watch(store: RunStore, console: Console) -> AbstractContextManager[None]:
    """The live view of a run being driven (loaded only by the commands that drive one)."""
    from worktree_swarm.ui.live import watch as live

    return live(store, console)
