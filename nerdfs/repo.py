"""The repository: typed, verified, deduplicated access to one store.

It owns the store's ``config`` (format version, chunker, compression), the
local index and cache that speed it up, and the objects; datasets and refs
are built on it in :mod:`nerdfs.datasets`.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .cache import ObjectCache
from .chunker import Chunker, ChunkerParams
from .errors import ConfigError, IntegrityError, ObjectNotFound, RefConflict, StoreError
from .index import Index
from .objects import Snapshot, Tree, decode, encode
from .store import S3Options, Store, open_store

FORMAT_VERSION = 1
CHUNK, TREE, SNAPSHOT = "chunks", "trees", "snapshots"


def object_key(kind: str, oid: str) -> str:
    return f"{kind}/{oid[:2]}/{oid}"


@dataclass(frozen=True)
class RepoConfig:
    """The store's ``config`` object: fixed when the store is created."""

    id: str
    chunker: ChunkerParams
    compression_level: int | None = 1
    version: int = FORMAT_VERSION

    def to_bytes(self) -> bytes:
        doc = {
            "version": self.version,
            "id": self.id,
            "chunker": self.chunker.to_dict(),
            "compression": {"algorithm": "zstd", "level": self.compression_level}
            if self.compression_level is not None
            else {"algorithm": "none"},
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, url: str, data: bytes) -> "RepoConfig":
        try:
            doc = json.loads(data)
            version = int(doc["version"])
            if version > FORMAT_VERSION:
                raise ConfigError(
                    f"store {url}: format version {version} is newer than this nerd understands ({FORMAT_VERSION}) — upgrade nerd"
                )
            comp = doc.get("compression", {})
            level = comp.get("level") if comp.get("algorithm") == "zstd" else None
            return cls(id=str(doc["id"]), chunker=ChunkerParams.from_dict(doc["chunker"]),
                       compression_level=level, version=version)
        except ConfigError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"store {url}: its config object is malformed ({e}) — is this a nerd store?") from None


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nerd"


class Repository:
    """Objects in one store, verified on every read and written at most once."""

    def __init__(self, store: Store, cache_dir: str | os.PathLike, cache_size: int = 10 << 30,
                 create: bool = True, chunker: ChunkerParams | None = None) -> None:
        self.store = store
        self.url = store.url
        self.config = self._load_config(create, chunker)
        self.id = self.config.id
        self.chunker = Chunker(self.config.chunker)
        cache_dir = Path(cache_dir)
        self._known_lock = threading.Lock()
        self._new_known: set[str] = set()
        self._flushed_at = time.monotonic()
        self.index = Index(cache_dir / "index")
        self.cache = ObjectCache(cache_dir / "objects", self.index, cache_size)

    @classmethod
    def open(cls, url: str, *, s3: S3Options | None = None, cache_dir: str | os.PathLike | None = None,
             cache_size: int = 10 << 30, create: bool = True, retry_attempts: int = 6) -> "Repository":
        store = open_store(url, s3, retry_attempts=retry_attempts)
        return cls(store, cache_dir or default_cache_dir(), cache_size, create=create)

    def close(self) -> None:
        self.flush()
        self.index.close()
        self.store.close()

    def __enter__(self) -> "Repository":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _load_config(self, create: bool, chunker: ChunkerParams | None) -> RepoConfig:
        found = self.store.get_versioned("config")
        if found is None:
            if not create:
                raise StoreError(f"store {self.url}: not a nerd store (no config object) — check datasets.store")
            cfg = RepoConfig(id=uuid.uuid4().hex, chunker=chunker or ChunkerParams())
            try:
                self.store.put_if("config", cfg.to_bytes(), None)
                return cfg
            except RefConflict:
                # Another client created the store at the same moment: use theirs.
                found = self.store.get_versioned("config")
                if found is None:
                    raise StoreError(f"store {self.url}: config vanished while creating it") from None
        return RepoConfig.from_bytes(self.url, found[0])

    # ------------------------------------------------------------------ objects

    def has(self, kind: str, oid: str) -> bool:
        """Whether the store holds the object: the index answers first, then the store."""
        key = object_key(kind, oid)
        if self.knows(key):
            return True
        if self.store.exists(key):
            self._learn(key)
            return True
        return False

    def put(self, kind: str, oid: str, plain: bytes | memoryview, *, check: bool = False) -> int:
        """Store an object unless the index knows the store has it; the number of bytes sent.

        Blocking: call from a worker thread. Objects are named by content, so
        sending one the store already has (uploaded by another client since
        our last listing) costs bandwidth, never correctness; ``check=True``
        asks the store first, which costs a request per object.
        """
        key = object_key(kind, oid)
        if self.knows(key) or (check and self.has(kind, oid)):
            return 0
        framed = encode(plain, self.config.compression_level)
        self.store.put(key, framed)
        self._learn(key)
        return len(framed)

    def knows(self, key: str) -> bool:
        """Whether the index (or the batch not yet written to it) says the store holds ``key``."""
        with self._known_lock:
            if key in self._new_known:
                return True
        return self.index.known(self.id, key)

    def _learn(self, key: str) -> None:
        # Batched (64 objects or 1 s): one LMDB write transaction per object
        # serialised the upload threads. After kill -9 only the last second's
        # objects are unknown to the index, and get sent again on resume.
        with self._known_lock:
            self._new_known.add(key)
            now = time.monotonic()
            if len(self._new_known) < 64 and now - self._flushed_at < 1.0:
                return
            batch, self._new_known, self._flushed_at = self._new_known, set(), now
        self.index.add_known(self.id, batch)

    def flush(self) -> None:
        """Write what was learnt about the store to the index."""
        with self._known_lock:
            batch, self._new_known = self._new_known, set()
        if batch:
            self.index.add_known(self.id, batch)

    def refresh_known(self, max_age: float = 24 * 3600.0) -> bool:
        """Read the store's chunk list into the index unless it was read within ``max_age`` seconds.

        One listing (1,000 keys a request on S3) replaces a HEAD per chunk:
        dedup against what other clients uploaded, at a fraction of the cost.
        """
        started = time.time()
        if started - self.index.listed_at(self.id) < max_age:
            return False
        batch: list[str] = []
        for key in self.store.list(f"{CHUNK}/"):
            batch.append(key)
            if len(batch) >= 10_000:
                self.index.add_known(self.id, batch)
                batch = []
        self.index.add_known(self.id, batch)
        self.index.set_listed_at(self.id, started)
        return True

    def get(self, kind: str, oid: str, *, cache: bool = True, keep: bool = True) -> bytes:
        """The object's verified plain bytes; ``cache`` reads the local cache, ``keep`` fills it."""
        hit = self.cache.get(oid) if cache else None
        if hit is not None:
            return hit
        key = object_key(kind, oid)
        try:
            framed = self.store.get(key)
        except ObjectNotFound:
            what = {CHUNK: "chunk", TREE: "tree", SNAPSHOT: "snapshot"}[kind]
            raise IntegrityError(f"store {self.url}: {what} {oid} is missing (the store is damaged)") from None
        plain = decode(oid, framed, {CHUNK: "chunk", TREE: "tree", SNAPSHOT: "snapshot"}[kind])
        if keep:
            self.cache.put(oid, plain)
        return plain

    def put_tree(self, tree: Tree) -> tuple[str, int]:
        tid, plain = tree.encode()
        return tid, self.put(TREE, tid, plain)

    def get_tree(self, tid: str) -> Tree:
        return Tree.decode(tid, self.get(TREE, tid))

    def put_snapshot(self, snap: Snapshot) -> str:
        sid, plain = snap.encode()
        self.put(SNAPSHOT, sid, plain)
        return sid

    def get_snapshot(self, sid: str) -> Snapshot:
        return Snapshot.decode(sid, self.get(SNAPSHOT, sid))
