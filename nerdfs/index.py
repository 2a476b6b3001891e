"""The local index: one LMDB environment that caches what the store holds.

It is only ever a cache of the store (plus, later, not-yet-uploaded state):
deleting it costs speed, never data. Tables:

- ``known``: object keys the store is known to hold, per store id, filled
  from one listing of the store and from our own uploads, so an upload asks
  the store nothing about chunks (see :meth:`Repository.refresh_known`).
- ``files``: a scan cache, path + stat → chunk list, so an unchanged file is
  neither read nor hashed again (the same test restic and rsync use).
- ``cache``: entries of the local chunk cache with their size and last use,
  for LRU eviction.
- ``meta``: small facts per store (when its chunk list was last read).

Write transactions are short and never held across I/O to the store.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import lmdb

from .errors import ConfigError

_U64x2 = struct.Struct(">QQ")


@dataclass(frozen=True)
class FileStat:
    """What must be unchanged for a file's cached chunk list to be reused."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileStat":
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class Index:
    def __init__(self, path: str | os.PathLike, map_size: int = 1 << 34) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.env = lmdb.open(str(self.path), map_size=map_size, max_dbs=16, subdir=True, readahead=False,
                                 sync=False)  # a cache: losing the last writes in a crash costs only a re-check
        except (OSError, lmdb.Error) as e:
            raise ConfigError(f"index {self.path}: cannot open ({e}) — check datasets.cache_dir") from None
        self._known = self.env.open_db(b"known")
        self._files = self.env.open_db(b"files")
        self._cache = self.env.open_db(b"cache")
        self._meta = self.env.open_db(b"meta")

    def close(self) -> None:
        self.env.close()

    # -------------------------------------------------------------- known objects

    @staticmethod
    def _kkey(store_id: str, key: str) -> bytes:
        return f"{store_id}/{key}".encode()

    def known(self, store_id: str, key: str) -> bool:
        with self.env.begin(db=self._known) as txn:
            return txn.get(self._kkey(store_id, key)) is not None

    def known_many(self, store_id: str, keys: Iterable[str]) -> set[str]:
        with self.env.begin(db=self._known) as txn:
            return {k for k in keys if txn.get(self._kkey(store_id, k)) is not None}

    def add_known(self, store_id: str, keys: Iterable[str]) -> None:
        with self.env.begin(db=self._known, write=True) as txn:
            for k in keys:
                txn.put(self._kkey(store_id, k), b"")

    def forget_known(self, store_id: str, keys: Iterable[str] | None = None) -> None:
        """Drop entries (all of a store's when ``keys`` is None), e.g. after gc or a lost store."""
        with self.env.begin(db=self._known, write=True) as txn:
            if keys is not None:
                for k in keys:
                    txn.delete(self._kkey(store_id, k))
                return
            prefix = f"{store_id}/".encode()
            cur = txn.cursor()
            if cur.set_range(prefix):
                while cur.key().startswith(prefix):
                    if not cur.delete():
                        break

    def listed_at(self, store_id: str) -> float:
        """When the store's chunk list was last read into ``known`` (0: never)."""
        with self.env.begin(db=self._meta) as txn:
            raw = txn.get(f"{store_id}/listed_at".encode())
        return float(raw) if raw else 0.0

    def set_listed_at(self, store_id: str, when: float) -> None:
        with self.env.begin(db=self._meta, write=True) as txn:
            txn.put(f"{store_id}/listed_at".encode(), repr(when).encode())

    # -------------------------------------------------------------- scan cache

    @staticmethod
    def _fkey(store_id: str, path: str) -> bytes:
        return f"{store_id}/".encode() + os.fsencode(path)

    def file_chunks(self, store_id: str, path: str, st: FileStat) -> list[tuple[str, int]] | None:
        """The chunk list recorded for ``path`` if its stat is unchanged since."""
        with self.env.begin(db=self._files) as txn:
            raw = txn.get(self._fkey(store_id, path))
        if raw is None:
            return None
        doc = json.loads(raw)
        if doc["stat"] != [st.size, st.mtime_ns, st.ctime_ns, st.ino, st.dev]:
            return None
        return [(c, n) for c, n in doc["chunks"]]

    def put_files(self, store_id: str, items: Iterable[tuple[str, FileStat, list[tuple[str, int]]]]) -> None:
        with self.env.begin(db=self._files, write=True) as txn:
            for path, st, chunks in items:
                doc = {"stat": [st.size, st.mtime_ns, st.ctime_ns, st.ino, st.dev], "chunks": chunks}
                txn.put(self._fkey(store_id, path), json.dumps(doc, separators=(",", ":")).encode())

    # -------------------------------------------------------------- chunk cache accounting

    def cache_touch(self, oid: str, size: int, now_ns: int) -> None:
        with self.env.begin(db=self._cache, write=True) as txn:
            txn.put(oid.encode(), _U64x2.pack(size, now_ns))

    def cache_remove(self, oids: Iterable[str]) -> None:
        with self.env.begin(db=self._cache, write=True) as txn:
            for oid in oids:
                txn.delete(oid.encode())

    def cache_entries(self) -> Iterator[tuple[str, int, int]]:
        """(id, size, last use) of every cached entry."""
        with self.env.begin(db=self._cache) as txn:
            for k, v in txn.cursor():
                size, used = _U64x2.unpack(v)
                yield k.decode(), size, used
