"""Command-line tools (outside the task package: tasks never import the engine)."""
