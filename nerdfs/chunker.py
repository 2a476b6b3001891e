"""Content-defined chunking (FastCDC 2020) with BLAKE3-256 chunk ids.

The parameters live in the store's ``config`` object: every client must cut
the same way or deduplication silently stops working across clients.
"""

from __future__ import annotations

from dataclasses import dataclass, asdict
from typing import BinaryIO, Iterator

import blake3
from pyfastcdc import FastCDC

KiB = 1024
MiB = 1024 * KiB


def chunk_id(data: bytes | memoryview) -> str:
    """The id of a chunk (and of every other object): hex BLAKE3-256 of its plain bytes."""
    return blake3.blake3(data).hexdigest()


@dataclass(frozen=True)
class ChunkerParams:
    """FastCDC parameters, fixed per store."""

    min_size: int = 256 * KiB
    avg_size: int = 1 * MiB
    max_size: int = 4 * MiB
    normalization: int = 1
    seed: int = 0
    algorithm: str = "fastcdc-2020"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ChunkerParams":
        params = cls(**d)
        if params.algorithm != "fastcdc-2020":
            raise ValueError(f"unknown chunker algorithm {params.algorithm!r}")
        if not (64 <= params.min_size <= params.avg_size <= params.max_size):
            raise ValueError("chunker sizes must satisfy 64 <= min <= avg <= max")
        return params


@dataclass(frozen=True)
class Piece:
    """One cut of a file: where it is, how long, and its id. ``data`` aliases the input."""

    offset: int
    length: int
    id: str
    data: memoryview


class Chunker:
    """Cuts bytes or files into content-defined pieces and names them.

    Thread-safe: each call gets its own FastCDC state.
    """

    def __init__(self, params: ChunkerParams | None = None) -> None:
        self.params = params or ChunkerParams()

    def _cdc(self) -> FastCDC:
        p = self.params
        return FastCDC(
            p.avg_size,
            min_size=p.min_size,
            max_size=p.max_size,
            normalized_chunking=p.normalization,
            seed=p.seed,
        )

    def cut(self, data: bytes | bytearray | memoryview) -> Iterator[Piece]:
        """Pieces of an in-memory buffer; each piece's data is a view into ``data``."""
        view = memoryview(data)
        if len(view) == 0:
            return
        if len(view) <= self.params.min_size:
            yield Piece(0, len(view), chunk_id(view), view)
            return
        for c in self._cdc().cut_buf(view):
            piece = view[c.offset : c.offset + c.length]
            yield Piece(c.offset, c.length, chunk_id(piece), piece)

    def cut_file(self, f: BinaryIO) -> Iterator[Piece]:
        """Pieces of an open file, read as a stream from its current position.

        Streaming (not mmap) so that a file truncated by someone else while we
        read it gives short data instead of SIGBUS; each piece owns a copy of
        its bytes, so it may outlive the next one.
        """
        first = f.read(self.params.min_size + 1)
        if len(first) <= self.params.min_size:
            if first:
                yield Piece(0, len(first), chunk_id(first), memoryview(first))
            return
        stream = _Prefixed(first, f)
        for c in self._cdc().cut_stream(stream):
            data = bytes(c.data)
            yield Piece(c.offset, c.length, chunk_id(data), memoryview(data))


class _Prefixed:
    """A reader that replays bytes already read before continuing with the file."""

    def __init__(self, head: bytes, f: BinaryIO) -> None:
        self._head = memoryview(head)
        self._f = f

    def readinto(self, b: memoryview) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._f.readinto(b) or 0
