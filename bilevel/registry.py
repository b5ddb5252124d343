"""The extension tables (contractions, strategies, engines) and the combinations they allow: the leaf of bilevel/.

An extension is one class with a `name` and the class attributes its kind declares; `@REGISTRY.register` puts it
in its table. The implementations import this module to register; config validation, the trainer, the CLI help,
the benchmark lists and the tests read the tables and `supported` here, so validating a config imports no
implementation. The tables hold the built-in classes as soon as `bilevel` is imported (`bilevel/__init__` imports
every implementation, and Python runs it before any `bilevel.*` module).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from bilevel.contractions import Contraction
    from bilevel.engines.base import Engine
    from bilevel.strategies import Strategy

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


CONTRACTIONS: Registry[type[Contraction]] = Registry("contraction")
STRATEGIES: Registry[type[Strategy]] = Registry("strategy")
ENGINES: Registry[type[Engine]] = Registry("engine")


def supported(engine: str, strategy: str) -> list[str] | None:
    """The contractions `engine` accepts with `strategy`, or None if it cannot run that strategy: the one place that
    says which (strategy, contraction, engine) combinations exist.

    A strategy without a weighter computes no α-gradient, so every engine runs it with any contraction. One with a
    weighter is a formula in one engine primitive (`Strategy.asks`); an engine that computes that primitive
    (`Engine.primitives`) runs it, with the contractions both accept."""
    s = STRATEGIES[strategy]
    if not s.uses_weighter:
        return CONTRACTIONS.names()
    primitives = ENGINES[engine].primitives
    if s.asks not in primitives:
        return None
    by_engine, by_strategy = primitives[s.asks], s.contractions
    accepted = [c for c in CONTRACTIONS
                if (by_engine is None or c in by_engine) and (by_strategy is None or c in by_strategy)]
    return accepted or None


def combinations() -> dict[str, dict[str, list[str]]]:
    """engine -> strategy -> accepted contractions, for every registered combination (tests, benchmarks)."""
    out: dict[str, dict[str, list[str]]] = {}
    for e in ENGINES:
        for s in STRATEGIES:
            cs = supported(e, s)
            if cs is not None:
                out.setdefault(e, {})[s] = cs
    return out
