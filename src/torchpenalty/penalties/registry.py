"""Explicit registries of named classes (penalties by spec name, schedules by config name).

A name is registered once: registering it again, for any class, is an error, so a second
definition never silently replaces the first. `Registry.scoped` restores the registry as it was
when the block ends, so a test that registers a penalty of its own leaves nothing behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Case-insensitive names -> objects of one ``kind`` ("penalty", "schedule")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, names: Iterable[str], value: T) -> T:
        """Register ``value`` under every one of ``names``; raise `ValueError` naming any name
        that is taken (nothing is registered then)."""
        keys = [n.lower() for n in names]
        if not keys:
            raise ValueError(f"a {self.kind} needs at least one name to be registered")
        taken = [k for k in keys if k in self._entries]
        if taken or len(set(keys)) != len(keys):
            raise ValueError(
                f"{self.kind} name {', '.join(taken or keys)!s} is already registered"
                + (f" (to {self._entries[taken[0]]!r})" if taken else "")
                + "; choose another name"
            )
        for k in keys:
            self._entries[k] = value
        return value

    def lookup(self, name: str) -> T:
        """The object registered under ``name``; `ValueError` listing the known names if none."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        try:
            return self._entries[name.lower()]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; known {self.kind} names: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())

    def names(self) -> list[str]:
        return sorted(self._entries)

    @contextlib.contextmanager
    def scoped(self) -> Iterator[Registry[T]]:
        """Within the block registrations may be added; afterwards the registry is as before."""
        saved = dict(self._entries)
        try:
            yield self
        finally:
            self._entries.clear()
            self._entries.update(saved)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
