"""Tasks: clean/corrupt token batches, answers and a default metric."""

from .base import Task

__all__ = ["Task"]
