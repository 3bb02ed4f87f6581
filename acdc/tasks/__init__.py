"""Tasks: clean/corrupt token batches, answers and a default metric."""

from .base import Task
from .ioi import ioi

__all__ = ["Task", "ioi"]
