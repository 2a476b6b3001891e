"""The store interface: a flat key → bytes namespace plus one conditional write.

Content-addressed objects (chunks, trees, snapshots) are written once and
never change, so ``put`` may be repeated safely. Refs are the only mutable
objects; they change only through ``put_if``, a compare-and-swap on a version
token, which is what keeps two clients from silently losing a snapshot.
"""

from __future__ import annotations

from typing import Iterator, Protocol


class Store(Protocol):
    url: str

    def get(self, key: str) -> bytes:
        """The object's bytes; :class:`~nerdfs.errors.ObjectNotFound` if missing."""

    def put(self, key: str, data: bytes) -> None:
        """Write an object (atomically: readers see all of it or nothing)."""

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix`` (full keys, in no particular order)."""

    def delete(self, key: str) -> None:
        """Remove an object; missing objects are not an error."""

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object and an opaque version token, or None if it does not exist."""

    def put_if(self, key: str, data: bytes, version: str | None) -> None:
        """Write only if the object is still at ``version`` (None: still absent).

        Raises :class:`~nerdfs.errors.RefConflict` otherwise.
        """

    def close(self) -> None: ...
