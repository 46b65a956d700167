"""Name -> factory tables filled by decorators at import time (as timm's ``register_model``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from bioprop.errors import BiopropError

T = TypeVar("T")


class Registry(Generic[T]):
    """A table of named factories of one kind ("rule", "model", "dataset")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise BiopropError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def summary(self, name: str) -> str:
        """First line of the factory's docstring, for ``bioprop rules|models|datasets``."""
        doc = inspect.getdoc(self._items[name]) or ""
        return doc.splitlines()[0] if doc else ""


def check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any], what: str) -> None:
    """Reject keyword arguments ``fn`` does not take, naming the ones it does.

    Config sections such as ``rule.args`` are passed to factories as keywords; a typo must fail
    loudly instead of being ignored.
    """
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in kwargs:
        if key not in allowed:
            raise BiopropError(f"unknown option {key!r} for {what}; allowed: {', '.join(allowed)}")
