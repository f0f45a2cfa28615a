"""One generic, lazy registry for everything chosen by name in a recipe.

Built-in entries are declared as ``name -> "module:attr"`` and imported only when looked up, so
listing names or validating a recipe never imports torch or a converter. Plugins and tests register
with a decorator::

    @LOSSES.register("my_loss")
    def my_loss(student_out, teacher_out, batch, **params): ...
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from kd_edge.errors import ConfigError, DependencyError

T = TypeVar("T")


def closest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest of ``choices``, or an empty string."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


@dataclass
class _Entry:
    target: str | None = None
    obj: Any = None
    requires: tuple[str, ...] = ()
    extra: str | None = None
    summary: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class Registry(Generic[T]):
    """Maps short names to lazily imported objects of one kind (losses, exporters, targets...)."""

    kind: str
    _entries: dict[str, _Entry] = field(default_factory=dict)

    def declare(self, name: str, target: str, *, requires: tuple[str, ...] = (), extra: str | None = None,
                summary: str = "", **meta: Any) -> None:
        """Declare a built-in entry ``name`` living at ``"module:attr"``, imported on first lookup.
        Keyword ``meta`` is cheap metadata readable without importing (``registry.meta(name)``)."""
        self._add(name, _Entry(target=target, requires=requires, extra=extra, summary=summary, meta=meta))

    def register(self, name: str, *, requires: tuple[str, ...] = (), summary: str = "",
                 **meta: Any) -> Callable[[T], T]:
        """Decorator registering an object under ``name``."""

        def decorate(obj: T) -> T:
            self._add(name, _Entry(obj=obj, requires=requires, summary=summary, meta=meta))
            return obj

        return decorate

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests that register temporary entries)."""
        self._entries.pop(name, None)

    def _add(self, name: str, entry: _Entry) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def summary(self, name: str) -> str:
        """The one-line description of ``name``."""
        return self._entries[name].summary

    def meta(self, name: str) -> dict:
        """The metadata declared with ``name`` (no import)."""
        self.check(name)
        return self._entries[name].meta

    def check(self, name: str) -> None:
        """Raise ConfigError for an unknown name (listing the valid ones), without importing it."""
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} '{name}'{closest(name, self.names())}; "
                f"choose from: {', '.join(self.names())}"
            )

    def missing(self, name: str) -> list[str]:
        """The modules ``name`` needs that are not installed (checked with find_spec, no import)."""
        self.check(name)
        return [m for m in self._entries[name].requires if importlib.util.find_spec(m) is None]

    def is_available(self, name: str) -> bool:
        """True when every module that ``name`` needs is installed."""
        return not self.missing(name)

    def get(self, name: str) -> T:
        """Return the object registered as ``name``, importing its module on first use."""
        missing = self.missing(name)
        entry = self._entries[name]
        if missing:
            extra = f"pip install 'kd-edge[{entry.extra}]'" if entry.extra else f"pip install {' '.join(missing)}"
            raise DependencyError(f"{self.kind} '{name}' needs {', '.join(missing)}, which is not installed; run: {extra}")
        if entry.obj is None:
            module_name, attr = entry.target.split(":")
            entry.obj = getattr(importlib.import_module(module_name), attr)
        return entry.obj
