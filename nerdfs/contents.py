"""File contents in the mount: staging files for writes, chunks for reads.

A file that is written gets a staging file (``staging/<ino>``), filled from
its chunks first if it had content. Flushing (close of the last writer,
fsync, commit) cuts the staging file again: FastCDC resynchronises, so only
the chunks around a change are new, and only those are journaled for upload.
Every method here blocks: the FUSE layer runs them in worker threads,
except the small ``pwrite``/``pread`` calls on staging files.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .chunker import chunk_id
from .errors import IntegrityError, NerdError
from .repo import CHUNK, Repository
from .uploader import Journal
from .workspace import FsError, Inode, Workspace


class Contents:
    def __init__(self, repo: Repository, ws: Workspace, journal: Journal, root: Path,
                 memory_chunks: int = 12, readahead: int = 4) -> None:
        self.repo = repo
        self.ws = ws
        self.journal = journal
        self.dir = root / "staging"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fds: dict[int, int] = {}
        self._refs: dict[int, int] = {}  # stage() calls not yet matched by unstage()
        self._lock = threading.Lock()
        self._inode_locks: dict[int, threading.Lock] = {}
        self._recent: OrderedDict[str, bytes] = OrderedDict()  # a few chunks in memory for 128 KiB reads
        self._recent_max = memory_chunks
        # Sequential reads fetch the next chunks ahead, so the store's latency overlaps.
        self._ahead = ThreadPoolExecutor(readahead, thread_name_prefix="nerd-readahead")
        self._fetching: dict[str, Future] = {}
        self.readahead = readahead
        self._starts: tuple[int, list, list[int]] | None = None

    def staging_path(self, ino: int) -> Path:
        return self.dir / str(ino)

    def inode_lock(self, ino: int) -> threading.Lock:
        with self._lock:
            return self._inode_locks.setdefault(ino, threading.Lock())

    # ------------------------------------------------------------------ chunks

    def chunk(self, cid: str) -> bytes:
        """Plain chunk bytes: memory, the upload journal, the cache, or the store (verified)."""
        with self._lock:
            data = self._recent.get(cid)
            if data is not None:
                self._recent.move_to_end(cid)
                return data
            pending = self._fetching.get(cid)
        if pending is not None:
            return pending.result()
        return self._load(cid)

    def _prefetch(self, cids: list[str]) -> None:
        with self._lock:
            todo = [c for c in cids if c not in self._recent and c not in self._fetching]
            for cid in todo:
                self._fetching[cid] = self._ahead.submit(self._load, cid)

    def _load(self, cid: str) -> bytes:
        try:
            return self._fetch(cid)
        finally:
            with self._lock:
                self._fetching.pop(cid, None)

    def _fetch(self, cid: str) -> bytes:
        data = self.journal.read(cid)
        if data is not None and chunk_id(data) != cid:  # local disks rot too
            raise IntegrityError(f"journaled chunk {cid} in {self.journal.dir} is corrupted")
        if data is None:
            data = self.repo.get(CHUNK, cid)  # cache, then store; verified either way
        with self._lock:
            self._recent[cid] = data
            while len(self._recent) > self._recent_max:
                self._recent.popitem(last=False)
        return data

    def _offsets(self, node: Inode) -> list[int]:
        """Start offsets of the chunks (and the end), remembered for the last inode read."""
        cached = self._starts
        if cached is not None and cached[0] == node.ino and cached[1] is node.chunks:
            return cached[2]
        starts = [0]
        for _, n in node.chunks:
            starts.append(starts[-1] + n)
        self._starts = (node.ino, node.chunks, starts)
        return starts

    def read_chunks(self, node: Inode, offset: int, size: int) -> bytes:
        end = min(node.size, offset + size)
        if offset >= end:
            return b""
        starts = self._offsets(node)
        i = bisect.bisect_right(starts, offset) - 1
        self._prefetch([c for c, _ in node.chunks[i + 1:i + 1 + self.readahead]])
        out = []
        while i < len(node.chunks) and starts[i] < end:
            cid, n = node.chunks[i]
            data = self.chunk(cid)
            lo, hi = max(offset, starts[i]) - starts[i], min(end, starts[i] + n) - starts[i]
            out.append(data[lo:hi])
            i += 1
        return b"".join(out)

    # ------------------------------------------------------------------ staging

    def fd(self, ino: int) -> int:
        with self._lock:
            fd = self._fds.get(ino)
        if fd is None:
            raise FsError(5)
        return fd

    def stage(self, ino: int) -> int:
        """Open (creating and filling if needed) the staging file of inode ``ino``; its fd."""
        with self.inode_lock(ino):
            with self._lock:
                if ino in self._fds:
                    self._refs[ino] += 1
                    return self._fds[ino]
            node = self.ws.get(ino)  # read under the lock: an unstage may just have run
            path = self.staging_path(ino)
            if node.staged and path.exists():
                fd = os.open(path, os.O_RDWR)
            else:
                tmp = path.with_suffix(".fill")
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    offset = 0
                    for cid, n in node.chunks:
                        os.pwrite(fd, self.chunk(cid), offset)
                        offset += n
                    os.ftruncate(fd, node.size)
                    os.rename(tmp, path)
                except (OSError, NerdError):
                    os.close(fd)
                    tmp.unlink(missing_ok=True)
                    raise
                self.ws.update(node.ino, staged=True)
            with self._lock:
                self._fds[ino] = fd
                self._refs[ino] = 1
            return fd

    def unstage(self, ino: int) -> None:
        """Drop one user of the staging file; the last one closes it (and deletes it once flushed)."""
        with self.inode_lock(ino):
            with self._lock:
                if self._refs.get(ino, 0) > 1:
                    self._refs[ino] -= 1
                    return
                self._refs.pop(ino, None)
                fd = self._fds.pop(ino, None)
            if fd is not None:
                os.close(fd)
            try:
                node = self.ws.get(ino)
            except FsError:
                node = None
            if node is None or not node.unflushed:
                self.staging_path(ino).unlink(missing_ok=True)
                if node is not None and node.staged:
                    self.ws.update(ino, staged=False)

    def flush(self, ino: int, durable: bool = False) -> Inode:
        """Cut the staging file into chunks and journal the new ones; the updated inode."""
        with self.inode_lock(ino):
            node = self.ws.get(ino)
            if not node.staged or not node.unflushed:
                if durable:
                    self.journal.sync()
                return node
            with open(self.staging_path(ino), "rb") as f:
                chunks = []
                for piece in self.repo.chunker.cut_file(f):
                    chunks.append((piece.id, piece.length))
                    self.journal.add(piece.id, piece.data)
            size = sum(n for _, n in chunks)
            node = self.ws.update(ino, chunks=chunks, unflushed=False, size=size)
            if durable:
                self.journal.sync()
            return node

    def drop(self, ino: int) -> None:
        """The inode is gone: its staging file too."""
        with self._lock:
            fd = self._fds.pop(ino, None)
            self._refs.pop(ino, None)
            self._inode_locks.pop(ino, None)
        if fd is not None:
            os.close(fd)
        self.staging_path(ino).unlink(missing_ok=True)
