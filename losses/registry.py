"""Registry of upper losses: built-in names (`'vvaml'`, `'vagram'`) or a user class `'module:ClassName'`."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any, TypeVar

from losses.base import UpperLoss

_REGISTRY: dict[str, type] = {}
C = TypeVar("C", bound=type)


def register(name: str) -> Callable[[C], C]:
    """Class decorator: make `get_upper_loss(name)` build this class (names are case-insensitive)."""
    key = name.lower()
    if not key or ":" in key:
        raise ValueError(f"invalid upper-loss name {name!r} (must be non-empty and contain no ':')")

    def deco(cls: C) -> C:
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"upper-loss name {name!r} already registered to {_REGISTRY[key].__qualname__}")
        _REGISTRY[key] = cls
        return cls

    return deco


def registered() -> list[str]:
    return sorted(_REGISTRY)


def _resolve(name_or_path: str) -> Any:
    if ":" not in name_or_path:
        key = name_or_path.lower()
        if key not in _REGISTRY:
            raise ValueError(
                f"unknown upper loss {name_or_path!r}; registered: {registered()} "
                "(or give a user class as 'module.path:ClassName')"
            )
        return _REGISTRY[key]
    module_name, _, attr = name_or_path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"upper loss {name_or_path!r}: expected 'module.path:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, but also errors raised while executing the module
        raise ValueError(
            f"upper loss {name_or_path!r}: cannot import module {module_name!r}: {type(e).__name__}: {e}"
        ) from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"upper loss {name_or_path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def check_upper_loss(name_or_path: str) -> str:
    """Validate an upper-loss name or `'module.path:ClassName'` without building it; return it unchanged.

    For config validation: a registered name costs a dict lookup, a path imports its module. Raises a
    one-line ValueError naming the bad value and the registered names when the name is unknown, the path
    cannot be resolved, or it resolves to something that cannot be called.
    """
    if not isinstance(name_or_path, str):
        raise ValueError(f"upper loss must be a name or 'module.path:ClassName', got {name_or_path!r}; "
                         f"registered: {registered()}")
    try:
        obj = _resolve(name_or_path)
    except ValueError as e:
        # an unknown name's message already lists the registered names; an import failure's may span lines
        msg = str(e) if ":" not in name_or_path else f"{e}; registered: {registered()}"
        raise ValueError(re.sub(r"\s*\n\s*", " ", msg)) from e
    if not callable(obj):
        raise ValueError(f"upper loss {name_or_path!r} resolves to a non-callable {type(obj).__name__}; "
                         f"registered: {registered()}")
    return name_or_path


def upper_loss_class(name_or_path: str) -> Any:
    """What `get_upper_loss` would instantiate (a class or callable), without building it."""
    return _resolve(name_or_path)


def get_upper_loss(name_or_path: str, **kwargs: Any) -> UpperLoss:
    """Build an upper loss: `'vvaml'`, `'vagram'`, any `register`ed name, or `'module.path:ClassName'`.

    The class is instantiated with `**kwargs`. A user class should subclass `UpperLoss`; any other
    callable is accepted if its instance is callable as `loss(h, s_post, s_prior, value_fn) -> scalar`
    (`per_sample` / `values` are then only available if it defines them).
    """
    cls = _resolve(name_or_path)
    if not callable(cls):
        raise ValueError(f"upper loss {name_or_path!r} resolves to a non-callable {type(cls).__name__}")
    try:
        loss = cls(**kwargs)
    except TypeError as e:
        raise ValueError(
            f"upper loss {name_or_path!r}: cannot build with kwargs {sorted(kwargs)}: {e}"
        ) from e
    if not isinstance(loss, UpperLoss) and not callable(loss):
        raise ValueError(
            f"upper loss {name_or_path!r} built a non-callable {type(loss).__name__}; "
            "subclass losses.UpperLoss or define __call__(h, s_post, s_prior, value_fn)"
        )
    return loss
