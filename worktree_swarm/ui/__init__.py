"""The only owners of a rich Console."""
