"""typer commands only: parse options, call one core function, map errors to exit codes."""
