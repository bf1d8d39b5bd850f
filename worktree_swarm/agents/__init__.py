"""Agents: what edits files in a task's worktree."""
