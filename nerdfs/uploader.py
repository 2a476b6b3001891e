"""Lazy upload: the journal of chunks written locally but not yet in the store.

A flushed chunk is written to ``pending/<id>`` and recorded in the LMDB
``journal`` table; from then on it survives a crash. Small chunks (small
files) go into LMDB itself, in the same transaction: a file create and
rename per 4 KiB file would cost more than everything else the mount does
for it. The uploader, a trio
task, sends journaled chunks with bounded concurrency (boto3 and zstd in
threads) and exponential backoff while the store is unreachable, then moves
each chunk into the LRU cache. Dirty data is never evicted: when pending
bytes reach the cache limit, writers wait for the uploader.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

import trio

from .chunker import chunk_id
from .errors import NerdError
from .objects import encode
from .repo import CHUNK, Repository, object_key

log = logging.getLogger(__name__)
INLINE_MAX = 64 * 1024  # chunks this small are kept in LMDB while pending
INLINE_TOTAL = 1 << 30  # at most this much of them: the index's map must not fill up
_libc = ctypes.CDLL(None, use_errno=True)


class Journal:
    """Chunks waiting for upload: files in ``pending/`` plus one LMDB table."""

    def __init__(self, repo: Repository, root: Path, limit: int) -> None:
        self.repo = repo
        self.dir = root / "pending"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = repo.index.env
        self._db = self.env.open_db(b"journal")  # id -> size
        self._data = self.env.open_db(b"journal_data")  # id -> bytes of small chunks
        self.limit = limit
        self._cond = threading.Condition()
        with self.env.begin() as txn:
            self._bytes = sum(int(v) for _, v in txn.cursor(db=self._db))
            self._inline = sum(len(v) for _, v in txn.cursor(db=self._data))
        self.changed = threading.Event()

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        with self.env.begin() as txn:
            return txn.stat(self._db)["entries"]

    def ids(self, limit: int = 1000) -> list[str]:
        with self.env.begin() as txn:
            out = []
            for k, _ in txn.cursor(db=self._db):
                out.append(bytes(k).decode())
                if len(out) >= limit:
                    break
            return out

    def has(self, cid: str) -> bool:
        with self.env.begin() as txn:
            return txn.get(cid.encode(), db=self._db) is not None

    def path(self, cid: str) -> Path:
        return self.dir / cid

    def add(self, cid: str, data: bytes | memoryview) -> bool:
        """Journal a chunk unless the store or the journal has it; blocks while the cache is full of dirty data.

        Not durable by itself: :meth:`sync` makes everything journaled so far durable at once.
        """
        if self.repo.knows(object_key(CHUNK, cid)) or self.has(cid):
            return False
        with self._cond:
            while self._bytes + len(data) > self.limit and self._bytes > 0:
                self._cond.wait(1.0)
        inline = len(data) <= INLINE_MAX and self._inline + len(data) <= INLINE_TOTAL
        if not inline:
            tmp = self.dir / f".tmp-{cid}-{threading.get_ident()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, self.path(cid))
        with self.env.begin(write=True) as txn:
            added = txn.put(cid.encode(), str(len(data)).encode(), db=self._db, overwrite=False)
            if added and inline:
                txn.put(cid.encode(), data, db=self._data)
        if added:
            with self._cond:
                self._bytes += len(data)
                self._inline += len(data) if inline else 0
        self.changed.set()
        return added

    def read(self, cid: str) -> bytes | None:
        with self.env.begin() as txn:
            data = txn.get(cid.encode(), db=self._data)
        if data is not None:
            return data
        try:
            return self.path(cid).read_bytes()
        except FileNotFoundError:
            return None

    def discard(self, cid: str) -> None:
        """Drop a damaged chunk's bytes (the entry goes with :meth:`done`)."""
        self.path(cid).unlink(missing_ok=True)
        with self.env.begin(write=True) as txn:
            txn.delete(cid.encode(), db=self._data)

    def done(self, cid: str) -> None:
        """The chunk is in the store: forget it here, keep its bytes in the cache."""
        with self.env.begin(write=True) as txn:
            raw = txn.pop(cid.encode(), db=self._db)
            small = txn.pop(cid.encode(), db=self._data)
        if small is not None:
            self.repo.cache.put(cid, small)
        else:
            self.repo.cache.adopt(cid, self.path(cid))
        if raw is not None:
            with self._cond:
                self._bytes -= int(raw)
                self._inline -= len(small) if small is not None else 0
                self._cond.notify_all()

    def sync(self) -> None:
        """Make every journaled chunk and staging file durable: one syncfs for the whole cache
        filesystem instead of an fdatasync per chunk, then the LMDB index."""
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(self.dir))
        finally:
            os.close(fd)
        self.env.sync(True)


class Uploader:
    """Sends journaled chunks to the store in the background."""

    def __init__(self, journal: Journal, concurrency: int = 8) -> None:
        self.journal = journal
        self.repo = journal.repo
        self.concurrency = concurrency
        self.limiter = trio.CapacityLimiter(concurrency)
        self.last_error: str | None = None
        self.uploaded_bytes = 0
        self._rate_window: list[tuple[float, int]] = []
        self._busy = False
        # While the filesystem is busy with requests, uploading at full width would take the GIL
        # from it (boto3 is mostly Python): upload one chunk at a time then, unless someone waits
        # for the uploads (``urgent``) or the journal fills up. Lazy upload, as designed.
        self.fs_busy: Callable[[], bool] = lambda: False
        self.urgent = 0

    @property
    def rate(self) -> float:
        """Bytes per second over the last 10 s."""
        now = time.monotonic()
        self._rate_window = [(t, n) for t, n in self._rate_window if now - t < 10]
        return sum(n for _, n in self._rate_window) / 10.0

    def _send(self, cid: str) -> int:
        data = self.journal.read(cid)
        if data is None:  # already moved (a duplicate entry); nothing to send
            self.journal.done(cid)
            return 0
        if chunk_id(data) != cid:
            # A pending file cut short by a power loss before any fsync promised
            # it: never store wrong bytes under an id.
            log.error("journaled chunk %s is damaged (not fsync'd before a crash?); dropped", cid)
            self.journal.discard(cid)
            self.journal.done(cid)
            return 0
        framed = encode(data, self.repo.config.compression_level)
        self.repo.store.put(object_key(CHUNK, cid), framed)
        self.repo._learn(object_key(CHUNK, cid))
        self.journal.done(cid)
        return len(framed)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        delay = 0.5
        while True:
            full = self.urgent or self.journal.pending_bytes > self.journal.limit // 4 or not self.fs_busy()
            self.limiter.total_tokens = self.concurrency if full else 1
            ids = self.journal.ids(self.concurrency * 4 if full else 2)
            if not ids:
                if self._busy:  # a burst is over: give the buffers it left in the heap back to the system
                    self._busy = False
                    _libc.malloc_trim(0)
                self.journal.changed.clear()
                # Wake on new work (set from writer threads) without busy waiting.
                await trio.to_thread.run_sync(self.journal.changed.wait, 1.0, abandon_on_cancel=True)
                continue
            self._busy = True
            failures: list[BaseException] = []

            async def one(cid: str) -> None:
                try:
                    sent = await trio.to_thread.run_sync(self._send, cid, limiter=self.limiter)
                    self.uploaded_bytes += sent
                    self._rate_window.append((time.monotonic(), sent))
                except NerdError as e:
                    failures.append(e)

            async with trio.open_nursery() as nursery:
                for cid in ids:
                    nursery.start_soon(one, cid)
            if failures:
                self.last_error = str(failures[0])
                log.warning("upload failed, retrying in %.1fs: %s", delay, self.last_error)
                await trio.sleep(delay)
                delay = min(delay * 2, 10.0)
            else:
                delay = 0.5
                self.last_error = None

    async def wait_until_stored(self, remaining: Callable[[], int], progress=None) -> None:
        """Upload at full width until ``remaining()`` (chunks someone waits for) is 0, reporting progress."""
        self.urgent += 1
        try:
            while n := remaining():
                if progress:
                    await progress({"pending_chunks": n, "pending_bytes": self.journal.pending_bytes})
                await trio.sleep(0.1)
        finally:
            self.urgent -= 1
