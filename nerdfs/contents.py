"""File contents in the mount: staging buffers for writes, chunks for reads.

A file that is written gets a staging buffer, filled from its chunks first if
it had content: a staging file (``staging/<ino>``), or for a small file a
bytearray in memory (a file create, rename and unlink per small file would
cost more than the rest of its way into the mount). A small file that grows
past ``MEMORY_MAX`` becomes an :class:`Appender` (written front to back, it is
cut into chunks as it streams in, with no staging file) or, for any other
pattern of writes, a staging file. What is in memory is made durable the
POSIX way: by fsync or close, which cut it into chunks. Flushing (close of the last writer,
fsync, commit) cuts the staging file again: FastCDC resynchronises, so only
the chunks around a change are new, and only those are journaled for upload.
Every method here blocks: the FUSE layer runs them in worker threads,
except the small ``pwrite``/``pread`` calls on staging files.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from .appender import Appender
from .chunker import chunk_id
from .errors import IntegrityError, NerdError
from .repo import CHUNK, Repository
from .uploader import Journal
from .workspace import FsError, Inode, Workspace


MEMORY_MAX = 64 * 1024
MAX_APPENDERS = 4  # files streaming at once (each holds up to ~32 MiB); more use staging files


class _Buffer:
    """A staging file: pread/pwrite/truncate on a descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.dirty = False  # holds writes that are not chunks yet (also persisted: Inode.unflushed)
        self.writes = 0  # changes so far: a flush racing with a write must not mark the buffer clean

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def pwrite(self, data: bytes, offset: int) -> int:
        self.writes += 1
        return os.pwrite(self.fd, data, offset)

    def truncate(self, size: int) -> None:
        self.writes += 1
        os.ftruncate(self.fd, size)

    def close(self) -> None:
        os.close(self.fd)


class _MemoryBuffer:
    """A small file's staging buffer in memory."""

    fd = None

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = bytearray(data)
        self.dirty = False
        self.writes = 0
        self.closed = False  # replaced by a bigger buffer: writes must go there (see Contents.pwrite)
        self.lock = threading.Lock()  # a write and the copy into a bigger buffer never interleave

    def pread(self, size: int, offset: int) -> bytes:
        with self.lock:
            if self.closed:
                raise _Replaced
            return bytes(self.data[offset:offset + size])

    def pwrite(self, data: bytes, offset: int) -> int:
        with self.lock:
            if self.closed:
                raise _Replaced
            self.writes += 1
            if offset > len(self.data):
                self.data.extend(bytes(offset - len(self.data)))
            self.data[offset:offset + len(data)] = data
            return len(data)

    def truncate(self, size: int) -> None:
        with self.lock:
            if self.closed:
                raise _Replaced
            self.writes += 1
            if size < len(self.data):
                del self.data[size:]
            else:
                self.data.extend(bytes(size - len(self.data)))

    def snapshot(self) -> bytes:
        with self.lock:
            return bytes(self.data)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.data = bytearray()


class _Replaced(Exception):
    """The memory buffer was just replaced by a bigger one: retry on the new buffer."""


class WouldBlock(Exception):
    """A call on the event loop would wait for a lock held by a worker thread: run it in a thread."""


class Contents:
    def __init__(self, repo: Repository, ws: Workspace, journal: Journal, root: Path,
                 memory_chunks: int = 12, readahead: int = 4) -> None:
        self.repo = repo
        self.ws = ws
        self.journal = journal
        self.dir = root / "staging"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._bufs: dict[int, _Buffer | _MemoryBuffer | Appender] = {}
        self._cutter = ThreadPoolExecutor(2, thread_name_prefix="nerd-cut")
        self._appenders = 0
        self._refs: dict[int, int] = {}  # stage() calls not yet matched by unstage()
        self._lock = threading.Lock()
        self._inode_locks: dict[int, threading.Lock] = {}
        self._loop_thread = threading.get_ident()  # made on the thread that runs the event loop
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

    @contextlib.contextmanager
    def _locked(self, ino: int) -> Iterator[None]:
        """The inode's lock. The event loop never waits for it: the thread holding it may itself
        wait for the uploader, which runs on the loop. There it raises :class:`WouldBlock`, and
        the caller runs the call in a thread instead."""
        lock = self.inode_lock(ino)
        if threading.get_ident() == self._loop_thread:
            if not lock.acquire(blocking=False):
                raise WouldBlock(ino)
        else:
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

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

    def _buffer(self, ino: int) -> _Buffer | _MemoryBuffer | Appender:
        with self._lock:
            buf = self._bufs.get(ino)
        if buf is None:
            raise FsError(5)
        return buf

    def in_memory(self, ino: int) -> bool:
        """Whether the file's latest content is in a staging buffer in memory (reads must go there)."""
        with self._lock:
            return isinstance(self._bufs.get(ino), (_MemoryBuffer, Appender))

    def must_settle(self, ino: int, write_at: int | None = None) -> bool:
        """Whether a read, truncate (``write_at=None``) or write at ``write_at`` needs :meth:`settle`
        first: the file is streaming and the request is not an append. Settling may read the whole
        file back, so the caller runs it in a thread."""
        with self._lock:
            buf = self._bufs.get(ino)
        return isinstance(buf, Appender) and (write_at is None or not buf.accepts(write_at))

    def settle(self, ino: int) -> None:
        """A streaming file becomes a staging file: its journaled chunks and its tail, on disk."""
        with self._locked(ino):
            with self._lock:
                buf = self._bufs.get(ino)
            if not isinstance(buf, Appender):
                return
            chunks, tail = buf.contents()
            path = self.staging_path(ino)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                offset = 0
                for cid, n in chunks:
                    os.pwrite(fd, self.chunk(cid), offset)
                    offset += n
                os.pwrite(fd, tail, offset)
            except (OSError, NerdError):
                os.close(fd)
                raise
            new = _Buffer(fd)
            new.dirty, new.writes = buf.dirty, buf.writes
            self.ws.update(ino, staged=True, unflushed=buf.dirty)
            with self._lock:
                self._bufs[ino] = new
                self._appenders -= 1
            buf.close()

    def backlogged(self, ino: int) -> bool:
        """Whether a streaming file's writer is ahead of the chunker (then it waits: :meth:`catch_up`)."""
        with self._lock:
            buf = self._bufs.get(ino)
        return isinstance(buf, Appender) and buf.backlogged()

    def catch_up(self, ino: int) -> None:
        with self._lock:
            buf = self._bufs.get(ino)
        if isinstance(buf, Appender):
            buf.wait()

    def pread(self, ino: int, size: int, offset: int) -> bytes:
        while True:
            buf = self._buffer(ino)
            if isinstance(buf, Appender):
                self.settle(ino)
                buf = self._buffer(ino)
            try:
                return buf.pread(size, offset)
            except _Replaced:
                continue

    def pwrite(self, ino: int, data: bytes, offset: int) -> int:
        while True:
            buf = self._buffer(ino)
            if isinstance(buf, _MemoryBuffer) and offset + len(data) > MEMORY_MAX:
                buf = self._spill(ino, buf)
            if isinstance(buf, Appender) and not buf.accepts(offset):
                self.settle(ino)
                buf = self._buffer(ino)
            try:
                return buf.pwrite(data, offset)
            except _Replaced:  # another thread spilled it meanwhile
                continue

    def truncate(self, ino: int, size: int) -> None:
        while True:
            buf = self._buffer(ino)
            if isinstance(buf, _MemoryBuffer) and size > MEMORY_MAX:
                buf = self._spill(ino, buf)
            if isinstance(buf, Appender):
                if size == buf.size:
                    return
                self.settle(ino)
                buf = self._buffer(ino)
            try:
                return buf.truncate(size)
            except _Replaced:
                continue

    def mark_unflushed(self, ino: int) -> None:
        """The buffer now holds writes that are not chunks yet; a staging file's flag is persistent,
        so a crash leaves its content to recover."""
        buf = self._buffer(ino)
        if not buf.dirty:
            buf.dirty = True
            if isinstance(buf, _Buffer):
                self.ws.update(ino, unflushed=True)

    def _spill(self, ino: int, mem: _MemoryBuffer) -> _Buffer | Appender:
        """A small file grew: its memory buffer becomes an appender (or a staging file)."""
        with self._locked(ino), mem.lock:
            if mem.closed:  # spilled by another thread meanwhile
                return self._buffer(ino)
            with self._lock:
                stream = self._appenders < MAX_APPENDERS
                if stream:
                    self._appenders += 1
            if stream:
                app = Appender(self.repo.chunker, self.journal.add, bytes(mem.data), self._cutter)
                app.dirty, app.writes = mem.dirty, mem.writes
                with self._lock:
                    self._bufs[ino] = app
                mem.closed, mem.data = True, bytearray()
                return app
            path = self.staging_path(ino)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.pwrite(fd, mem.data, 0)
            buf = _Buffer(fd)
            buf.dirty, buf.writes = mem.dirty, mem.writes
            self.ws.update(ino, staged=True, unflushed=mem.dirty)
            with self._lock:
                self._bufs[ino] = buf
            mem.closed, mem.data = True, bytearray()
            return buf

    def stage(self, ino: int, empty: bool = False) -> None:
        """Open (creating and filling if needed) the staging buffer of inode ``ino``.

        ``empty``: the caller truncates the file next, so its old content is not read.
        """
        with self._locked(ino):
            with self._lock:
                if ino in self._bufs:
                    self._refs[ino] += 1
                    return
            node = self.ws.get(ino)  # read under the lock: an unstage may just have run
            path = self.staging_path(ino)
            if node.staged and path.exists():
                buf: _Buffer | _MemoryBuffer = _Buffer(os.open(path, os.O_RDWR))
                buf.dirty = node.unflushed
            elif empty and not node.staged:
                buf = _MemoryBuffer(b"")
            elif node.size <= MEMORY_MAX:
                buf = _MemoryBuffer(b"".join(self.chunk(cid) for cid, _ in node.chunks))
                buf.truncate(node.size)
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
                buf = _Buffer(fd)
            with self._lock:
                self._bufs[ino] = buf
                self._refs[ino] = 1

    def unstage(self, ino: int) -> None:
        """Drop one user of the staging buffer; the last one closes it (and deletes it once flushed)."""
        with self._locked(ino):
            with self._lock:
                if self._refs.get(ino, 0) > 1:
                    self._refs[ino] -= 1
                    return
                self._refs.pop(ino, None)
                buf = self._bufs.pop(ino, None)
            if buf is not None:
                buf.close()
            if isinstance(buf, Appender):
                with self._lock:
                    self._appenders -= 1
            if isinstance(buf, (_MemoryBuffer, Appender)):
                return
            try:
                node = self.ws.get(ino)
            except FsError:
                node = None
            if node is None or not node.unflushed:
                self.staging_path(ino).unlink(missing_ok=True)
                if node is not None and node.staged:
                    self.ws.update(ino, staged=False)

    def flush(self, ino: int, durable: bool = False) -> Inode:
        """Cut the staging buffer into chunks and journal the new ones; the updated inode."""
        with self._locked(ino):
            with self._lock:
                buf = self._bufs.get(ino)
            seen = buf.writes if buf is not None else 0
            if isinstance(buf, Appender):
                if buf.dirty:
                    chunks, size = buf.finish()
                    clean = buf.writes == seen
                    if clean:
                        buf.dirty = False
                    node = self.ws.update(ino, chunks=chunks, unflushed=False, size=size)
                else:
                    node = self.ws.get(ino)
            elif isinstance(buf, _MemoryBuffer):
                node = self._cut(ino, io.BytesIO(buf.snapshot()), buf, seen) if buf.dirty else self.ws.get(ino)
            else:
                node = self.ws.get(ino)
                if node.staged and node.unflushed:
                    with open(self.staging_path(ino), "rb") as f:
                        node = self._cut(ino, f, buf, seen)
            if durable:
                self.journal.sync()
            return node

    def _cut(self, ino: int, f, buf, seen: int) -> Inode:
        """Chunks of ``f`` become the file's content; the buffer is clean unless written meanwhile."""
        chunks = []
        for piece in self.repo.chunker.cut_file(f):
            chunks.append((piece.id, piece.length))
            self.journal.add(piece.id, piece.data)
        size = sum(n for _, n in chunks)
        clean = buf is None or buf.writes == seen
        if clean and buf is not None:
            buf.dirty = False
        unflushed = not clean and isinstance(buf, _Buffer)  # memory buffers are not recovered after a crash
        return self.ws.update(ino, chunks=chunks, unflushed=unflushed, size=size)

    def drop(self, ino: int) -> None:
        """The inode is gone: its staging file too."""
        with self._lock:
            buf = self._bufs.pop(ino, None)
            self._refs.pop(ino, None)
            self._inode_locks.pop(ino, None)
            if isinstance(buf, Appender):
                self._appenders -= 1
        if buf is not None:
            buf.close()
        self.staging_path(ino).unlink(missing_ok=True)
