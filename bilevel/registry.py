"""A name -> class table for each extension point (contractions, strategies, engines).

An extension is one class with a `name` and the class attributes its kind declares; `@REGISTRY.register` puts it
in the table, and config validation, the CLI help, the benchmark lists and the trainer read the table. Nothing
else needs editing to add one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, T] = {}

    def register(self, cls: T) -> T:
        """Class decorator: add `cls` under `cls.name` (refuses a name taken by another class)."""
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} class needs a non-empty `name`, {cls.__qualname__} has {name!r}")
        if name in self._classes and self._classes[name] is not cls:
            raise ValueError(f"{self.kind} {name!r} is already registered to {self._classes[name].__qualname__}")
        self._classes[name] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Remove an entry (tests, and interactive sessions that redefine a class)."""
        self[name]
        del self._classes[name]

    def __getitem__(self, name: str) -> T:
        if name not in self._classes:
            raise ValueError(f"unknown {self.kind} {name!r}; accepted: {self.names()}")
        return self._classes[name]

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def names(self) -> list[str]:
        return list(self._classes)

    def check(self, name: str) -> str:
        """`name` if registered, else the one-line error naming the accepted ones (for validators)."""
        self[name]
        return name
