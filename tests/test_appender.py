"""The appender cuts a file while it streams in exactly as cutting the whole file would."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nerdfs import appender
from nerdfs.appender import Appender
from nerdfs.chunker import Chunker, ChunkerParams

# Small chunks so that a few hundred KiB make many of them.
PARAMS = ChunkerParams(min_size=1024, avg_size=4096, max_size=16384)


@pytest.fixture(autouse=True)
def small_thresholds(monkeypatch):
    monkeypatch.setattr(appender, "CUT_AT", 2 * PARAMS.max_size)
    monkeypatch.setattr(appender, "BACKLOG", 4 * PARAMS.max_size)


def whole(data: bytes) -> list[tuple[str, int]]:
    return [(p.id, p.length) for p in Chunker(PARAMS).cut(data)]


def journal():
    stored: dict[str, bytes] = {}

    def add(cid: str, data) -> None:
        stored[cid] = bytes(data)

    return stored, add


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(0, 300_000), flushes=st.integers(0, 4))
def test_streamed_chunks_equal_whole_file_chunks(seed, size, flushes):
    rng = random.Random(seed)
    data = rng.randbytes(size)
    stored, add = journal()
    with ThreadPoolExecutor(2) as pool:
        app = Appender(Chunker(PARAMS), add, b"", pool)
        offset = 0
        flush_at = sorted(rng.randrange(0, size + 1) for _ in range(flushes))
        while offset < size:
            n = min(rng.choice([1, 100, 4096, 65536, 131072]), size - offset)
            app.pwrite(data[offset:offset + n], offset)
            offset += n
            while flush_at and flush_at[0] <= offset:
                flush_at.pop(0)
                chunks, got = app.finish()  # fsync in the middle: what is written so far, all of it
                assert got == offset
                assert b"".join(stored[c] for c, _ in chunks) == data[:offset]
        chunks, got = app.finish()
    assert got == size
    assert chunks == whole(data)  # the same cut as of the whole file: dedup works across clients
    assert all(c in stored for c, _ in chunks)


def test_page_rewrites_and_holes_land_in_the_tail():
    stored, add = journal()
    with ThreadPoolExecutor(1) as pool:
        app = Appender(Chunker(PARAMS), add, b"", pool)
        app.pwrite(b"a" * 100, 0)
        app.pwrite(b"b" * 200, 50)  # the kernel writes a page again, with more in it
        app.pwrite(b"c" * 10, 1000)  # past the end: a hole, read as zeros
        chunks, size = app.finish()
    expected = b"a" * 50 + b"b" * 200 + bytes(750) + b"c" * 10
    assert size == len(expected)
    assert b"".join(stored[c] for c, _ in chunks) == expected


def test_writes_before_the_tail_are_refused_and_contents_are_complete():
    rng = random.Random(7)
    data = rng.randbytes(200_000)
    stored, add = journal()
    with ThreadPoolExecutor(1) as pool:
        app = Appender(Chunker(PARAMS), add, b"", pool)
        for off in range(0, len(data), 8192):
            app.pwrite(data[off:off + 8192], off)
        app.wait()
        assert not app.accepts(0)  # the start is cut already: the file must settle first
        with pytest.raises(ValueError):
            app.pwrite(b"x", 0)
        chunks, tail = app.contents()
    assert b"".join(stored[c] for c, _ in chunks) + tail == data


def test_a_failing_journal_reaches_the_writer():
    calls = []

    def add(cid, data):
        calls.append(cid)
        raise OSError(28, "No space left on device")

    data = random.Random(3).randbytes(100_000)
    with ThreadPoolExecutor(1) as pool:
        app = Appender(Chunker(PARAMS), add, b"", pool)
        app.pwrite(data[:50_000], 0)
        with pytest.raises(OSError):
            app.wait()
            app.pwrite(data[50_000:], 50_000)
        assert calls
        with pytest.raises(OSError):
            app.finish()


def test_flushes_racing_with_appends_return_a_prefix_of_the_file():
    """fsync (finish) in one thread while another appends: each flush sees exactly a prefix."""
    import threading

    data = random.Random(11).randbytes(600_000)
    stored, add = journal()
    results: list[tuple[list, int]] = []
    with ThreadPoolExecutor(2) as pool:
        app = Appender(Chunker(PARAMS), add, b"", pool)
        done = threading.Event()

        def flusher() -> None:
            while not done.is_set():
                results.append(app.finish())

        t = threading.Thread(target=flusher)
        t.start()
        for off in range(0, len(data), 3000):
            app.pwrite(data[off:off + 3000], off)
        done.set()
        t.join()
        chunks, size = app.finish()
    assert size == len(data) and chunks == whole(data)
    assert len(results) > 10
    for got, n in results:
        assert b"".join(stored[c] for c, _ in got) == data[:n]
