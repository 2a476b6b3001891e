"""The chunker: FastCDC cuts with BLAKE3 ids, the same for every client and every way of reading."""

from __future__ import annotations

import io
import random

import blake3
import pytest

from nerdfs.chunker import Chunker, ChunkerParams, KiB, MiB, chunk_id

SMALL = ChunkerParams(min_size=16 * KiB, avg_size=64 * KiB, max_size=256 * KiB)


def rand_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def cuts(pieces) -> list[tuple[int, int, str]]:
    return [(p.offset, p.length, p.id) for p in pieces]


def test_default_params_are_the_designed_ones():
    p = ChunkerParams()
    assert (p.min_size, p.avg_size, p.max_size) == (256 * KiB, 1 * MiB, 4 * MiB)
    assert ChunkerParams.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("bad", [
    {"min_size": 32, "avg_size": 256, "max_size": 1024},  # below 64
    {"min_size": 4096, "avg_size": 1024, "max_size": 8192},  # min > avg
    {"min_size": 1024, "avg_size": 8192, "max_size": 4096},  # avg > max
    {"algorithm": "rabin"},
])
def test_params_from_store_config_are_validated(bad):
    with pytest.raises(ValueError):
        ChunkerParams.from_dict({**ChunkerParams().to_dict(), **bad})


def test_cuts_are_deterministic_across_instances():
    data = rand_bytes(3 * MiB, seed=1)
    first = cuts(Chunker(SMALL).cut(data))
    second = cuts(Chunker(SMALL).cut(bytes(data)))
    assert first == second
    assert len(first) > 10  # really content-defined cuts, not one piece


def test_params_change_the_cuts():
    """The cut points depend on the params, which is why they are fixed per store."""
    data = rand_bytes(2 * MiB, seed=2)
    other = ChunkerParams(min_size=8 * KiB, avg_size=32 * KiB, max_size=128 * KiB)
    assert cuts(Chunker(SMALL).cut(data)) != cuts(Chunker(other).cut(data))


def test_pieces_tile_the_input_and_ids_are_blake3_of_their_bytes():
    data = rand_bytes(3 * MiB + 12345, seed=3)
    pieces = list(Chunker(SMALL).cut(data))
    offset = 0
    for i, p in enumerate(pieces):
        assert p.offset == offset
        assert bytes(p.data) == data[p.offset:p.offset + p.length]
        assert p.id == blake3.blake3(data[p.offset:p.offset + p.length]).hexdigest()
        assert len(p.id) == 64
        assert p.length <= SMALL.max_size
        if i < len(pieces) - 1:
            assert p.length >= SMALL.min_size
        offset += p.length
    assert offset == len(data)
    assert chunk_id(b"abc") == blake3.blake3(b"abc").hexdigest()


@pytest.mark.parametrize("size", [0, 1, 100, SMALL.min_size - 1, SMALL.min_size, SMALL.min_size + 1,
                                  SMALL.max_size + 1, 3 * MiB + 7])
def test_cut_and_cut_file_agree(tmp_path, size):
    data = rand_bytes(size, seed=size)
    path = tmp_path / "f"
    path.write_bytes(data)
    chunker = Chunker(SMALL)
    with open(path, "rb") as f:
        from_file = list(chunker.cut_file(f))
    assert cuts(from_file) == cuts(chunker.cut(data))
    assert b"".join(bytes(p.data) for p in from_file) == data
    for p in from_file:
        assert chunk_id(bytes(p.data)) == p.id


def test_cut_file_pieces_outlive_the_next_read():
    """Pieces from a file own their bytes: collecting them all must not alias a reused buffer."""
    data = rand_bytes(2 * MiB, seed=4)
    pieces = list(Chunker(SMALL).cut_file(io.BytesIO(data)))
    assert len(pieces) > 2
    assert b"".join(bytes(p.data) for p in pieces) == data
    assert all(chunk_id(bytes(p.data)) == p.id for p in pieces)


def test_cut_file_reads_from_the_current_position():
    data = rand_bytes(MiB, seed=5)
    f = io.BytesIO(b"header" + data)
    f.seek(6)
    assert cuts(Chunker(SMALL).cut_file(f)) == cuts(Chunker(SMALL).cut(data))


def test_insertion_near_the_start_changes_only_a_few_chunks():
    data = rand_bytes(4 * MiB, seed=6)
    edited = data[:1000] + rand_bytes(100, seed=7) + data[1000:]
    chunker = Chunker(SMALL)
    before = [p.id for p in chunker.cut(data)]
    after = [p.id for p in chunker.cut(edited)]
    assert len(before) >= 30
    new = set(after) - set(before)
    assert 1 <= len(new) <= 3, f"{len(new)} of {len(after)} chunks changed"
    # Everything after the edit resynchronised: the tails are identical.
    assert after[-(len(before) - 3):] == before[-(len(before) - 3):]


def test_append_keeps_all_earlier_chunks_but_the_last():
    data = rand_bytes(2 * MiB, seed=8)
    chunker = Chunker(SMALL)
    before = [p.id for p in chunker.cut(data)]
    after = [p.id for p in chunker.cut(data + b"more")]
    assert after[:len(before) - 1] == before[:-1]


def test_empty_and_tiny_inputs():
    chunker = Chunker(SMALL)
    assert list(chunker.cut(b"")) == []
    assert list(chunker.cut_file(io.BytesIO(b""))) == []
    for tiny in (b"x", b"hello world"):
        (p,) = list(chunker.cut(tiny))
        assert (p.offset, p.length, p.id, bytes(p.data)) == (0, len(tiny), chunk_id(tiny), tiny)
        (q,) = list(chunker.cut_file(io.BytesIO(tiny)))
        assert (q.offset, q.length, q.id, bytes(q.data)) == (0, len(tiny), chunk_id(tiny), tiny)


def test_identical_content_gives_identical_ids_wherever_it_sits():
    """Dedup across files: the same block inside two different files yields shared chunks."""
    block = rand_bytes(MiB, seed=9)
    chunker = Chunker(SMALL)
    a = {p.id for p in chunker.cut(rand_bytes(300 * KiB, seed=10) + block)}
    b = {p.id for p in chunker.cut(rand_bytes(500 * KiB, seed=11) + block)}
    assert len(a & b) >= 5
