"""The quality gate: configured checks plus built-in diff checks."""
