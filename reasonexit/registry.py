"""Named registries: methods and per-step rules are found by name, built-in ones loaded on first use.

An entry is an object registered under a name, or a lazy ``"module:attr"`` target imported the
first time the name is asked for (as lm-evaluation-harness's registries do), so listing what
exists imports nothing heavy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects of one kind (``"method"``, ``"per-step rule"``) by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, lazy: str | None = None) -> Any:
        """Register ``obj`` (or, with ``lazy``, a ``"module:attr"`` to import when first asked for)
        under ``name``; without either, return a decorator that registers what it decorates."""
        if lazy is not None:
            self._lazy[name] = lazy
            return None
        if obj is None:

            def decorate(target: T) -> T:
                self._entries[name] = target
                return target

            return decorate
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> T:
        """The entry called ``name``; one line naming the choices when there is none."""
        if name not in self._entries and name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            loaded = getattr(importlib.import_module(module), attr)
            self._entries.setdefault(name, loaded)  # importing may have registered it already
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names())}") from None

    def load_all(self) -> None:
        """Import every lazy entry (so that their modules' own registrations run)."""
        for name in list(self._lazy):
            self.get(name)

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted({*self._entries, *self._lazy})

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) pairs, loading lazy entries."""
        return [(name, self.get(name)) for name in self.names()]


def register_in(registry: Registry[Any]) -> Callable[[Any], Any]:
    """A class decorator that registers a class under its ``name`` attribute."""

    def decorate(cls: Any) -> Any:
        registry.register(cls.name, cls)
        return cls

    return decorate
