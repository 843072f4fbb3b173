"""One small registry of named entries (backbones, adapters), in the spirit of timm's model registry.

Names are unique and lowercase; an unknown name raises an error that lists the valid names and the
closest matches, never a bare ``KeyError``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_VALID_NAME = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")


class Registry(Generic[T]):
    """A mapping from lowercase names to entries of one kind (e.g. ``"backbone"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name`` and return it. Raises ``ValueError`` when ``name`` is not lowercase
        ``[a-z0-9][a-z0-9_.+-]*`` or is already registered."""
        if not _VALID_NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be lowercase letters, digits, '_', '.', '+', '-'")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry of ``name``; an unknown name raises ``ValueError`` with the closest matches and all valid names."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"Unknown {self.kind} {name!r}.{hint} Valid names: {', '.join(sorted(self._entries))}"
            ) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
