"""The permission prompt tool the `claude` agent gives the Claude Code CLI: a tiny MCP server on
stdio that answers the CLI's permission questions for one worktree, so nobody has to.

Why it exists: wswarm's worktrees live under the git common dir (`.git/wswarm/worktrees/…`), and
the CLI treats every path with a `.git` component as a sensitive file. It then asks for permission
even under `--permission-mode acceptEdits` and allow rules, and in `-p` mode nobody answers, so
every edit would be refused. Only `bypassPermissions` skips that check, and it also lifts the
limit to the working directory. This server keeps the limit: a file tool may touch a path inside
the worktree (symlinks resolved, the worktree's own `.git` excluded) and nothing else.

Run as a script (`python -I claude_permit.py WORKTREE`): it imports only the standard library.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

TOOL = "approve"
# The tools that name a path, and the argument that holds it.
PATH_ARGS = {"Read": "file_path", "Write": "file_path", "Edit": "file_path", "MultiEdit": "file_path",
             "NotebookEdit": "notebook_path", "NotebookRead": "notebook_path", "Glob": "path", "Grep": "path",
             "LS": "path"}
# Bash is already allowed by the agent's flags (`--allowedTools Bash`); the CLI still asks when
# it thinks a command writes to a sensitive path, which every path in the worktree is to it.
COMMAND_TOOLS = frozenset({"Bash"})


def decide(tool: str, args: dict[str, Any], worktree: str) -> dict[str, Any]:
    """The CLI's expected answer: allow (with the input unchanged) or deny with a reason."""
    if tool in COMMAND_TOOLS:
        return {"behavior": "allow", "updatedInput": args}
    key = PATH_ARGS.get(tool)
    if key is None:
        return {"behavior": "deny", "message": f"{tool} is not available to wswarm's agents; "
                                               "work with the files of your worktree and Bash"}
    path = args.get(key) or "."
    if not isinstance(path, str):
        return {"behavior": "deny", "message": f"{key} must be a path"}
    root = os.path.realpath(worktree)
    target = os.path.realpath(os.path.join(root, path))   # an absolute path replaces root
    inside = os.path.relpath(target, root)
    if inside == os.pardir or inside.startswith(os.pardir + os.sep):
        return {"behavior": "deny", "message": f"{path} is outside your worktree {worktree}: "
                                               "change only files inside it"}
    if ".git" in inside.split(os.sep):
        return {"behavior": "deny", "message": f"{path} is git's own data: change the worktree's files only"}
    return {"behavior": "allow", "updatedInput": args}


def answer(message: dict[str, Any], worktree: str) -> dict[str, Any] | None:
    """The JSON-RPC reply to one MCP message (None for a notification)."""
    if "id" not in message:
        return None
    method = message.get("method")
    reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
    if method == "initialize":
        version = (message.get("params") or {}).get("protocolVersion") or "2025-06-18"
        reply["result"] = {"protocolVersion": version, "capabilities": {"tools": {}},
                           "serverInfo": {"name": "wswarm-permit", "version": "1"}}
    elif method == "tools/list":
        reply["result"] = {"tools": [{
            "name": TOOL, "description": "Answers permission requests for the task's worktree.",
            "inputSchema": {"type": "object", "properties": {"tool_name": {"type": "string"},
                                                             "input": {"type": "object"},
                                                             "tool_use_id": {"type": "string"}}}}]}
    elif method == "tools/call":
        params = message.get("params") or {}
        call = params.get("arguments") or {}
        args = call.get("input")
        verdict = decide(str(call.get("tool_name")), args if isinstance(args, dict) else {}, worktree)
        reply["result"] = {"content": [{"type": "text", "text": json.dumps(verdict)}]}
    elif method == "ping":
        reply["result"] = {}
    else:
        reply["error"] = {"code": -32601, "message": f"method not found: {method}"}
    return reply


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: claude_permit.py WORKTREE", file=sys.stderr)
        return 2
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        reply = answer(message, argv[0]) if isinstance(message, dict) else None
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
