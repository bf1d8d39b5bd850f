"""The one place that talks to git."""
