"""The package version (one place; the CLI and pyproject read it)."""

__version__ = "0.1.0"
