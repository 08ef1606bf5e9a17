"""Bad input, said in one line: how every refusal of a pydantic-checked value reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Invalid(Protocol):
    """pydantic's ValidationError, or FastAPI's RequestValidationError: a list of problems."""

    def errors(self) -> Sequence[Any]: ...


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with an input: where (a path of names), what, and the value given."""

    location: tuple[str | int, ...]
    message: str
    value: Any = None


def first_problem(error: Invalid) -> Problem:
    found = error.errors()
    if not found:
        return Problem((), "invalid input")
    first = found[0]
    # A validator's ValueError reads "Value error, <our text>": the prefix says nothing.
    return Problem(tuple(first["loc"]), str(first["msg"]).removeprefix("Value error, "), first.get("input"))


def one_line(error: Invalid | ValueError, *within: str) -> str:
    """`where: what` for the first problem, its path under `within` (say "body")."""
    if not isinstance(error, Invalid):  # a plain ValueError of ours says it all
        return str(error)
    problem = first_problem(error)
    where = ".".join(str(part) for part in (*within, *problem.location))
    return f"{where}: {problem.message}" if where else problem.message
