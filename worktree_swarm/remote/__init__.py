"""Attempts on other machines: Redis streams carry requests, outcomes and events; a git remote carries code."""
