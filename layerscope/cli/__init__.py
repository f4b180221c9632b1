"""The typer command line: a thin face over the engine."""
