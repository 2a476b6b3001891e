"""The local object cache: verified plain objects on local disk, evicted LRU.

Objects are immutable and named by their hash, so a cached copy can never be
stale; it is still verified on read, because a local disk can rot too.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path

from .chunker import chunk_id
from .index import Index


class ObjectCache:
    def __init__(self, root: str | os.PathLike, index: Index, limit: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.index = index
        self.limit = limit
        self._lock = threading.Lock()
        self._used = sum(size for _, size, _ in index.cache_entries())

    @property
    def used(self) -> int:
        return self._used

    def _path(self, oid: str) -> Path:
        return self.root / oid[:2] / oid

    def get(self, oid: str) -> bytes | None:
        """The plain object, or None on a miss (or a cached copy that went bad)."""
        if self.limit <= 0:
            return None
        try:
            data = self._path(oid).read_bytes()
        except OSError:
            return None
        if chunk_id(data) != oid:
            self._drop([oid])
            return None
        self.index.cache_touch(oid, len(data), time.time_ns())
        return data

    def put(self, oid: str, plain: bytes | memoryview) -> None:
        """Keep a copy; best effort: a full or read-only cache disk is not an error."""
        if self.limit <= 0 or len(plain) > self.limit:
            return
        path = self._path(oid)
        if path.exists():
            return
        tmp = path.with_name(f".tmp-{oid}-{secrets.token_hex(4)}")
        try:
            path.parent.mkdir(exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(plain)
            with self._lock:  # threads often fetch the same object at once: count it once
                fresh = not path.exists()
                if fresh:
                    os.rename(tmp, path)
                    self._used += len(plain)
            if not fresh:
                tmp.unlink()
                return
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
            return
        self.index.cache_touch(oid, len(plain), time.time_ns())
        with self._lock:
            over = self._used > self.limit
        if over:
            self.evict()

    def adopt(self, oid: str, path: Path) -> None:
        """Take over a local file holding the object's plain bytes (moved, not copied)."""
        dest = self._path(oid)
        try:
            size = path.stat().st_size
            dest.parent.mkdir(exist_ok=True)
            with self._lock:
                keep = self.limit > 0 and not dest.exists()
                if keep:
                    os.rename(path, dest)
                    self._used += size
            if not keep:
                path.unlink()
                return
        except OSError:
            return
        self.index.cache_touch(oid, size, time.time_ns())
        with self._lock:
            over = self._used > self.limit
        if over:
            self.evict()

    def evict(self, target: int | None = None) -> None:
        """Remove least recently used entries until the cache is at ``target`` (90% of the limit)."""
        goal = int(self.limit * 0.9) if target is None else target
        with self._lock:
            if self._used <= goal:
                return
            victims = []
            for oid, size, _ in sorted(self.index.cache_entries(), key=lambda e: e[2]):
                if self._used <= goal:
                    break
                victims.append(oid)
                self._used -= size
        self._drop(victims, accounted=True)

    def _drop(self, oids: list[str], accounted: bool = False) -> None:
        for oid in oids:
            try:
                size = self._path(oid).stat().st_size
                self._path(oid).unlink()
            except OSError:
                size = 0
            if not accounted:
                with self._lock:
                    self._used -= size
        self.index.cache_remove(oids)
