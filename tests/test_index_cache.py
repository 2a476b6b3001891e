"""The local index (known objects, scan cache) and the LRU object cache."""

from __future__ import annotations

import os
import time

import pytest

from nerdfs.cache import ObjectCache
from nerdfs.chunker import chunk_id
from nerdfs.index import FileStat, Index


@pytest.fixture
def index(tmp_path):
    idx = Index(tmp_path / "index", map_size=64 << 20)
    yield idx
    idx.close()


# ---------------------------------------------------------------- known objects


def test_known_objects_are_per_store(index):
    keys = [f"chunks/{i:02x}/{i:02x}abc" for i in range(5)]
    assert not index.known("store-a", keys[0])
    index.add_known("store-a", keys)
    assert all(index.known("store-a", k) for k in keys)
    assert not any(index.known("store-b", k) for k in keys)
    assert index.known_many("store-a", keys + ["chunks/ff/other"]) == set(keys)
    assert index.known_many("store-b", keys) == set()


def test_forget_known(index):
    index.add_known("a", ["k1", "k2", "k3"])
    index.add_known("ab", ["k1"])  # a store id that starts like another one
    index.add_known("b", ["k1"])
    index.forget_known("a", ["k2"])
    assert index.known_many("a", ["k1", "k2", "k3"]) == {"k1", "k3"}
    index.forget_known("a")
    assert index.known_many("a", ["k1", "k2", "k3"]) == set()
    assert index.known("ab", "k1") and index.known("b", "k1")


def test_index_survives_reopening(tmp_path):
    idx = Index(tmp_path / "index", map_size=64 << 20)
    idx.add_known("s", ["chunks/aa/aa1"])
    idx.close()
    idx = Index(tmp_path / "index", map_size=64 << 20)
    try:
        assert idx.known("s", "chunks/aa/aa1")
    finally:
        idx.close()


# ---------------------------------------------------------------- scan cache


def test_scan_cache_returns_chunks_only_while_the_stat_is_unchanged(index, tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"0123456789")
    st = FileStat.of(os.stat(path))
    chunks = [(chunk_id(b"01234"), 5), (chunk_id(b"56789"), 5)]
    assert index.file_chunks("s", str(path), st) is None
    index.put_files("s", [(str(path), st, chunks)])
    assert index.file_chunks("s", str(path), FileStat.of(os.stat(path))) == chunks
    assert index.file_chunks("other-store", str(path), st) is None
    assert index.file_chunks("s", str(tmp_path / "elsewhere"), st) is None

    # Same size, rewritten in place: mtime/ctime move, the cached list must not be used.
    path.write_bytes(b"9876543210")
    assert index.file_chunks("s", str(path), FileStat.of(os.stat(path))) is None


@pytest.mark.parametrize("field", ["size", "mtime_ns", "ctime_ns", "ino", "dev"])
def test_scan_cache_checks_every_stat_field(index, field):
    st = FileStat(size=10, mtime_ns=1, ctime_ns=2, ino=3, dev=4)
    index.put_files("s", [("/x", st, [(chunk_id(b"x"), 10)])])
    changed = FileStat(**{**st.__dict__, field: getattr(st, field) + 1})
    assert index.file_chunks("s", "/x", changed) is None
    assert index.file_chunks("s", "/x", st) == [(chunk_id(b"x"), 10)]


def test_scan_cache_handles_non_utf8_paths(index):
    path = os.fsdecode(b"/data/caf\xe9.bin")
    st = FileStat(1, 1, 1, 1, 1)
    index.put_files("s", [(path, st, [(chunk_id(b"x"), 1)])])
    assert index.file_chunks("s", path, st) == [(chunk_id(b"x"), 1)]


# ---------------------------------------------------------------- object cache


def obj(i: int, size: int = 1000) -> tuple[str, bytes]:
    data = bytes([i % 256]) * size
    return chunk_id(data), data


def test_cache_put_get(index, tmp_path):
    cache = ObjectCache(tmp_path / "objects", index, limit=1 << 20)
    oid, data = obj(1)
    assert cache.get(oid) is None
    cache.put(oid, memoryview(data))
    assert cache.get(oid) == data
    assert cache.used == len(data)
    cache.put(oid, data)  # again: no double counting
    assert cache.used == len(data)


def test_cache_evicts_least_recently_used_beyond_its_limit(index, tmp_path):
    cache = ObjectCache(tmp_path / "objects", index, limit=10_000)
    objs = [obj(i) for i in range(11)]
    for oid, data in objs[:10]:
        cache.put(oid, data)
        time.sleep(0.002)
    assert cache.used == 10_000  # at the limit, not beyond: nothing evicted yet
    assert all(cache.get(oid) == data for oid, data in objs[:1])  # touch #0: now most recent
    time.sleep(0.002)
    cache.put(*objs[10])  # 11 000 > 10 000: evict down to 90%
    assert cache.used <= 9_000
    present = {i for i, (oid, _) in enumerate(objs) if (tmp_path / "objects" / oid[:2] / oid).exists()}
    assert present == {0, 3, 4, 5, 6, 7, 8, 9, 10}
    assert cache.get(objs[1][0]) is None and cache.get(objs[2][0]) is None
    assert cache.get(objs[0][0]) == objs[0][1]
    assert {oid for oid, _, _ in index.cache_entries()} == {objs[i][0] for i in present}


def test_cache_usage_survives_reopening(index, tmp_path):
    cache = ObjectCache(tmp_path / "objects", index, limit=10_000)
    for i in range(3):
        cache.put(*obj(i))
    again = ObjectCache(tmp_path / "objects", index, limit=10_000)
    assert again.used == 3_000
    assert again.get(obj(2)[0]) == obj(2)[1]


def test_corrupted_cached_file_is_dropped_not_returned(index, tmp_path):
    cache = ObjectCache(tmp_path / "objects", index, limit=1 << 20)
    oid, data = obj(7)
    cache.put(oid, data)
    path = tmp_path / "objects" / oid[:2] / oid
    path.write_bytes(b"\x00" + data[1:])  # bit rot on the local disk
    assert cache.get(oid) is None
    assert not path.exists()
    assert cache.used == 0
    assert oid not in {o for o, _, _ in index.cache_entries()}
    cache.put(oid, data)  # it can be cached again afterwards
    assert cache.get(oid) == data


def test_cache_disabled_or_too_small(index, tmp_path):
    off = ObjectCache(tmp_path / "off", index, limit=0)
    oid, data = obj(1)
    off.put(oid, data)
    assert off.get(oid) is None
    assert not any((tmp_path / "off").rglob("*"))
    small = ObjectCache(tmp_path / "small", index, limit=500)
    small.put(oid, data)  # bigger than the whole cache: not kept
    assert small.get(oid) is None
    assert small.used == 0


def test_concurrent_puts_of_one_object_count_it_once(index, tmp_path):
    """Restore threads often fetch the same chunk at once: the usage must not drift upwards."""
    import threading

    cache = ObjectCache(tmp_path / "objects", index, limit=1 << 20)
    for i in range(30):
        oid, data = obj(i, 10_000)
        barrier = threading.Barrier(4)

        def put() -> None:
            barrier.wait()
            cache.put(oid, data)

        threads = [threading.Thread(target=put) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert cache.used == 30 * 10_000 == sum(size for _, size, _ in index.cache_entries())
    assert not list((tmp_path / "objects").rglob(".tmp-*"))
    assert ObjectCache(tmp_path / "objects", index, limit=1 << 20).used == cache.used
