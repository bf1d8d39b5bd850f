"""wswarm: many coding agents on one repository — worktrees, a gate and a merge train."""

__version__ = "0.1.0"
