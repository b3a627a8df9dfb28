"""One small registry type for every named, pluggable part (couplings, architectures, bundled
datasets, schedules, bench backends): a name registered twice is a bug and fails at import; an
unknown name is the user's and gets one line with the choices."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from tlprune.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> item, in registration order; `what` names the kind in messages."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"unknown {self.what} {name!r}: choose from {self.names()}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self):
        return self._items.items()
