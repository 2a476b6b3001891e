"""Append-only writes, cut into chunks while they stream in.

``cp``, ``rsync``, ``tar`` and ``dd`` write a new file front to back. Such a
file needs no staging file: its bytes collect in a tail in memory, and once
the tail holds a few maximum-size chunks a worker thread cuts it. FastCDC
decides a cut from the bytes since the previous cut only, so every piece but
the last is exactly what cutting the whole file would give; those are
journaled (written to local disk once, hashed on the second core while the
writer goes on) and the last piece stays in the tail. A write anywhere else,
a truncate or a read turns the file back into a staging file
(:meth:`Contents.settle`): rare, and correct either way.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor
from typing import Callable

from .chunker import Chunker

CUT_AT = 6 << 20  # cut once the tail holds this much (more than one maximum-size chunk)
BACKLOG = 10 << 20  # writers wait while the tail holds this much and a cut is running


class _Tail:
    """Bytes not cut yet, kept as the pieces they were written in: appending copies nothing."""

    def __init__(self, head: bytes = b"") -> None:
        self._pieces: list[bytes | bytearray] = [head] if head else []
        self._len = len(head)

    def __len__(self) -> int:
        return self._len

    def write(self, at: int, data: bytes) -> None:
        if at > self._len:  # a hole: zeros
            self._pieces.append(bytes(at - self._len))
            self._len = at
        if at == self._len:
            self._pieces.append(data if isinstance(data, bytes) else bytes(data))  # never a view of a reused buffer
            self._len += len(data)
            return
        whole = bytearray(self.take())  # rare: the kernel writes a page of the tail again
        whole[at:at + len(data)] = data
        self._pieces, self._len = [whole], len(whole)

    def take(self) -> bytes | bytearray:
        """All of it, contiguous, and empty afterwards."""
        pieces, self._pieces, self._len = self._pieces, [], 0
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def peek(self) -> bytes | bytearray:
        """All of it, contiguous, kept."""
        joined = self.take()
        self.prepend(joined)
        return joined

    def prepend(self, data: bytes) -> None:
        if data:
            self._pieces.insert(0, data)
            self._len += len(data)


class Appender:
    """One file's content while it is appended to: journaled chunks, then a tail in memory."""

    def __init__(self, chunker: Chunker, journal_add: Callable[[str, memoryview], object], head: bytes,
                 executor: Executor) -> None:
        self._chunker = chunker
        self._add = journal_add
        self._executor = executor
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.chunks: list[tuple[str, int]] = []  # final pieces, journaled
        self._done = 0  # bytes in self.chunks
        self._cutting = 0  # bytes being cut right now (they follow self.chunks)
        self._busy = False
        self._tail = _Tail(bytes(head))
        self._error: BaseException | None = None
        self.dirty = False  # the buffer protocol of Contents
        self.writes = 0

    @property
    def size(self) -> int:
        with self._lock:
            return self._done + self._cutting + len(self._tail)

    def accepts(self, offset: int) -> bool:
        """Whether a write at ``offset`` lands in the tail or after it (else: settle first)."""
        with self._lock:
            return offset >= self._done + self._cutting

    def pwrite(self, data: bytes, offset: int) -> int:
        """Write into the tail (after :meth:`accepts`); a gap past the end reads as zeros."""
        with self._lock:
            self._raise()
            start = self._done + self._cutting
            if offset < start:
                raise ValueError("write before the tail: settle the file first")
            self._tail.write(offset - start, data)
            self.writes += 1
            if not self._busy and len(self._tail) >= CUT_AT:
                self._start_cut()
        return len(data)

    def backlogged(self) -> bool:
        with self._lock:
            return self._busy and len(self._tail) >= BACKLOG

    def wait(self) -> None:
        """Until no cut is running (writers that outrun the chunker wait here, in a thread)."""
        with self._lock:
            while self._busy:
                self._idle.wait()
            self._raise()

    def finish(self) -> tuple[list[tuple[str, int]], int]:
        """Everything written so far as journaled chunks, and its size (flush, fsync, close).

        The last piece ends where the writes end, not where the content says:
        it is journaled for this flush but its bytes stay in the tail, so the
        next appends are cut together with them.
        """
        with self._lock:
            while self._busy:
                self._idle.wait()
            self._raise()
            work = self._tail.take()
            self._cutting, self._busy = len(work), True
        pieces: list = []
        try:
            pieces = list(self._chunker.cut(work))
            for p in pieces:
                self._add(p.id, p.data)
        except BaseException as e:
            self._settle_cut(work, [], e)
            raise
        return self._settle_cut(work, pieces[:-1], None, last=pieces[-1:])

    def contents(self) -> tuple[list[tuple[str, int]], bytes]:
        """The journaled chunks and the tail (to turn the file into a staging file)."""
        self.wait()
        with self._lock:
            return list(self.chunks), bytes(self._tail.peek())

    # ------------------------------------------------------------------ cutting

    def _start_cut(self) -> None:  # under the lock
        work = self._tail.take()
        self._cutting, self._busy = len(work), True
        self._executor.submit(self._cut, work)

    def _cut(self, work: bytes | bytearray) -> None:
        final: list = []
        try:
            final = list(self._chunker.cut(work))[:-1]
            for p in final:
                self._add(p.id, p.data)
        except BaseException as e:  # noqa: BLE001 - handed to the writer
            self._settle_cut(work, [], e)
            return
        self._settle_cut(work, final, None)

    def _settle_cut(self, work: bytes | bytearray, final: list, error: BaseException | None,
                    last: list | None = None) -> tuple[list[tuple[str, int]], int]:
        """Final pieces join the chunks; the rest of ``work`` goes back in front of the tail.

        Returns the chunks so far plus the provisional ``last`` pieces, and their size, as they
        are before the next cut can start (which may begin with ``last``'s bytes).
        """
        used = sum(p.length for p in final)
        rest = bytes(memoryview(work)[used:]) if used else work
        with self._lock:
            self.chunks += [(p.id, p.length) for p in final]
            self._done += used
            so_far = (self.chunks + [(p.id, p.length) for p in last or []],
                      self._done + sum(p.length for p in last or []))
            self._tail.prepend(rest)
            self._cutting, self._busy = 0, False
            self._error = self._error or error
            if error is None and len(self._tail) >= CUT_AT:
                self._start_cut()
            self._idle.notify_all()
        return so_far

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        try:
            self.wait()
        except BaseException:  # noqa: BLE001 - the file is being dropped anyway
            pass
        self._tail = _Tail()
