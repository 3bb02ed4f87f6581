"""Tasks: clean/corrupt token batches, answers and a default metric.

Generators: `ioi` (Wang et al. 2022), `greater_than` (Hanna et al. 2023), `induction` (repeated
random tokens), `docstring` (Heimersheim & Janiak 2023); your own with `Task.from_pairs` (text)
or `Task.from_tokens` (ids).
"""

from .base import Task
from .docstring import docstring
from .greater_than import greater_than
from .induction import induction
from .ioi import ioi

__all__ = ["Task", "docstring", "greater_than", "induction", "ioi"]
