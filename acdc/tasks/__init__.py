"""Tasks: clean/corrupt token batches, answers and a default metric.

Generators: `ioi` (Wang et al. 2022), `greater_than` (Hanna et al. 2023), `induction` (repeated
random tokens), `docstring` (Heimersheim & Janiak 2023), and MIB's (Mueller et al. 2025) `arithmetic`
(two operands) and `mcqa` (multiple choice), generated offline; your own with `Task.from_pairs` (text)
or `Task.from_tokens` (ids).
"""

from typing import Any

from .arithmetic import arithmetic
from .base import Task
from .docstring import docstring
from .greater_than import greater_than
from .induction import induction
from .ioi import ioi
from .mcqa import mcqa

__all__ = ["GENERATORS", "Task", "arithmetic", "docstring", "greater_than", "induction", "ioi", "mcqa", "remake"]

GENERATORS = {"ioi": ioi, "greater-than": greater_than, "induction": induction, "docstring": docstring,
              "arithmetic": arithmetic, "mcqa": mcqa}


def remake(recipe: dict[str, Any], model: Any, **changes: Any) -> Task:
    """The task a `Task.recipe` describes, made again for ``model`` (its tokenizer), with ``changes`` to its
    arguments (``n_prompts=``, ``seed=``, ``split=``). A one-line ValueError for a recipe that cannot be remade."""
    name = recipe.get("task")
    if name not in GENERATORS:
        raise ValueError(f"no generator makes task {name!r} again; one of {', '.join(GENERATORS)}")
    if recipe.get("remakeable") is False:
        raise ValueError(f"this {name} task was made with arguments that were not recorded (tensors or objects); "
                         "make it again by hand")
    kwargs = {k: v for k, v in recipe.items() if k not in ("task", "name", "n_prompts", "prompts", "remakeable")}
    kwargs.update(changes)
    n = kwargs.pop("n_prompts", recipe.get("n_prompts"))
    return GENERATORS[name](model, n, **kwargs) if n is not None else GENERATORS[name](model, **kwargs)
