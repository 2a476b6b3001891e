"""Object codecs: chunks, trees and snapshots (store format version 1).

Every object is stored as one codec byte (raw or zstd) and a payload. An
object's id is the BLAKE3-256 of its *plain* bytes, so it is independent of
compression and every read can be verified. Trees and snapshots are canonical
JSON (sorted keys, no spaces, ASCII): the same content always gives the same
bytes and therefore the same id, which is what shares unchanged subtrees.
"""

from __future__ import annotations

import base64
import binascii
import json
import stat
import threading
from dataclasses import dataclass, field
from typing import Any

import zstandard

from .chunker import chunk_id
from .errors import IntegrityError, UnsafeEntry

RAW = 0x00
ZSTD = 0x01

# Compression must save at least 1/16 of the bytes to be kept: below that the
# CPU spent decompressing on every read is not worth it.
_MIN_GAIN = 16

_local = threading.local()


def _zc(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "zc", None)
    if cache is None:
        cache = _local.zc = {}
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


def _zd() -> zstandard.ZstdDecompressor:
    zd = getattr(_local, "zd", None)
    if zd is None:
        zd = _local.zd = zstandard.ZstdDecompressor()
    return zd


_PROBE = 64 * 1024


def _pays(level: int, sample: memoryview) -> bool:
    return len(_zc(level).compress(sample)) <= len(sample) - len(sample) // _MIN_GAIN


def encode(plain: bytes | memoryview, level: int | None = 1) -> bytes:
    """Frame plain bytes for the store, compressing with zstd where it pays.

    ``level=None`` stores raw.
    """
    if level is not None and len(plain) >= 64:
        if len(plain) > 4 * _PROBE and not any(_pays(level, memoryview(plain)[at:at + _PROBE])
                                               for at in (0, len(plain) // 2)):
            # Neither the start nor the middle compresses (media, archives, random data): the rest
            # rarely does, and compressing megabytes for nothing costs CPU and a chunk-sized buffer.
            return bytes((RAW,)) + bytes(plain)
        packed = _zc(level).compress(plain)
        if len(packed) <= len(plain) - len(plain) // _MIN_GAIN:
            return bytes((ZSTD,)) + packed
    return bytes((RAW,)) + bytes(plain)


def decode(oid: str, framed: bytes, what: str = "object") -> bytes:
    """Unframe stored bytes and verify them against their id.

    A mismatch is an :class:`IntegrityError` naming the object: callers must
    never see wrong bytes.
    """
    if not framed:
        raise IntegrityError(f"{what} {oid} is empty in the store (corrupted)")
    codec = framed[0]
    try:
        if codec == RAW:
            plain = framed[1:]
        elif codec == ZSTD:
            plain = _zd().decompress(framed[1:])
        else:
            raise IntegrityError(f"{what} {oid} has unknown codec {codec} (corrupted or newer format)")
    except zstandard.ZstdError as e:
        raise IntegrityError(f"{what} {oid} does not decompress ({e}): corrupted in the store") from None
    if chunk_id(plain) != oid:
        raise IntegrityError(f"{what} {oid} does not match its id: corrupted in the store")
    return plain


def canonical(doc: dict[str, Any]) -> bytes:
    """Deterministic JSON bytes; non-UTF-8 file names survive as \\udcXX escapes."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _load(oid: str, plain: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(plain)
    except ValueError as e:
        raise IntegrityError(f"{what} {oid} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"{what} {oid} is not a JSON object")
    return doc


# ---------------------------------------------------------------- trees

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
_KINDS = (FILE, DIR, SYMLINK)


def check_name(name: str) -> None:
    """Refuse names that could escape the directory they are restored into."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise UnsafeEntry(f"unsafe entry name {name!r} in a tree: refusing to restore it")


@dataclass
class Entry:
    """One entry of a directory listing."""

    name: str
    kind: str
    mode: int = 0o644
    mtime_ns: int = 0
    size: int = 0
    chunks: list[tuple[str, int]] = field(default_factory=list)  # file: (id, length)
    tree: str | None = None  # dir: subtree id
    target: str | None = None  # symlink
    xattrs: dict[str, bytes] = field(default_factory=dict)  # extended attributes (from the mount)
    link: int = 0  # files with several names in one snapshot share a nonzero link id ...
    nlink: int = 1  # ... and carry their total number of names

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "kind": self.kind, "mode": self.mode, "mtime_ns": self.mtime_ns}
        if self.xattrs:
            doc["xattrs"] = {k: base64.b64encode(v).decode() for k, v in sorted(self.xattrs.items())}
        if self.link:
            doc["link"], doc["nlink"] = self.link, self.nlink
        if self.kind == FILE:
            doc["size"] = self.size
            doc["chunks"] = [[cid, n] for cid, n in self.chunks]
        elif self.kind == DIR:
            doc["tree"] = self.tree
        else:
            doc["target"] = self.target
        return doc

    @classmethod
    def from_doc(cls, tid: str, d: Any) -> "Entry":
        try:
            kind = d["kind"]
            if kind not in _KINDS:
                raise IntegrityError(f"tree {tid}: unknown entry kind {kind!r}")
            e = cls(name=d["name"], kind=kind, mode=int(d["mode"]) & 0o7777, mtime_ns=int(d["mtime_ns"]),
                    xattrs={str(k): base64.b64decode(v) for k, v in d.get("xattrs", {}).items()},
                    link=int(d.get("link", 0)), nlink=int(d.get("nlink", 1)))
            if kind == FILE:
                e.size = int(d["size"])
                e.chunks = [(str(c), int(n)) for c, n in d["chunks"]]
                if sum(n for _, n in e.chunks) != e.size:
                    raise IntegrityError(f"tree {tid}: file {e.name!r} chunk lengths do not add up to its size")
            elif kind == DIR:
                e.tree = str(d["tree"])
            else:
                e.target = str(d["target"])
        except (KeyError, TypeError, ValueError, binascii.Error) as err:
            raise IntegrityError(f"tree {tid}: malformed entry ({err!r})") from None
        check_name(e.name)
        return e


@dataclass
class Tree:
    """A directory listing, entries sorted by name."""

    entries: list[Entry] = field(default_factory=list)

    def encode(self) -> tuple[str, bytes]:
        """Return (id, canonical plain bytes)."""
        entries = sorted(self.entries, key=lambda e: e.name)
        plain = canonical({"v": 1, "entries": [e.to_doc() for e in entries]})
        return chunk_id(plain), plain

    @classmethod
    def decode(cls, tid: str, plain: bytes) -> "Tree":
        doc = _load(tid, plain, "tree")
        entries = doc.get("entries")
        if not isinstance(entries, list):
            raise IntegrityError(f"tree {tid} has no entry list")
        tree = cls([Entry.from_doc(tid, d) for d in entries])
        names = [e.name for e in tree.entries]
        if len(set(names)) != len(names):
            raise IntegrityError(f"tree {tid} has duplicate names")
        return tree


def mode_kind(st_mode: int) -> str | None:
    """The entry kind of a stat mode, or None for special files we do not store."""
    if stat.S_ISREG(st_mode):
        return FILE
    if stat.S_ISDIR(st_mode):
        return DIR
    if stat.S_ISLNK(st_mode):
        return SYMLINK
    return None


# ---------------------------------------------------------------- snapshots


@dataclass
class Snapshot:
    """An immutable version of a dataset."""

    dataset: str
    tree: str
    parent: str | None
    time: str  # ISO 8601, UTC
    host: str
    message: str = ""
    files: int = 0
    bytes: int = 0
    root_mode: int = 0o755  # the dataset directory's own mode and mtime
    root_mtime_ns: int = 0

    def encode(self) -> tuple[str, bytes]:
        plain = canonical({"v": 1, **self.__dict__})
        return chunk_id(plain), plain

    @classmethod
    def decode(cls, sid: str, plain: bytes) -> "Snapshot":
        doc = _load(sid, plain, "snapshot")
        doc.pop("v", None)
        try:
            return cls(**doc)
        except TypeError as e:
            raise IntegrityError(f"snapshot {sid} is malformed: {e}") from None
