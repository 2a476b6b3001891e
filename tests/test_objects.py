"""Object codecs: framing and verification, canonical trees and snapshots, unsafe names."""

from __future__ import annotations

import json
import os
import random
import stat

import pytest

from nerdfs.chunker import chunk_id
from nerdfs.errors import IntegrityError, UnsafeEntry
from nerdfs.objects import (DIR, FILE, RAW, SYMLINK, ZSTD, Entry, Snapshot, Tree, canonical, check_name, decode,
                            encode, mode_kind)

RANDOM = random.Random(0).randbytes(100_000)
COMPRESSIBLE = b"the same line of text, again and again\n" * 3000


# ---------------------------------------------------------------- framing


@pytest.mark.parametrize("plain", [b"", b"x", RANDOM, COMPRESSIBLE, b"\0" * 64])
@pytest.mark.parametrize("level", [None, 1, 3])
def test_encode_decode_round_trip(plain, level):
    oid = chunk_id(plain)
    assert decode(oid, encode(plain, level)) == plain
    assert decode(oid, encode(memoryview(plain), level)) == plain


def test_compressible_data_is_zstd_and_smaller():
    framed = encode(COMPRESSIBLE)
    assert framed[0] == ZSTD
    assert len(framed) < len(COMPRESSIBLE) // 10


def test_random_data_stays_raw():
    framed = encode(RANDOM)
    assert framed[0] == RAW
    assert framed[1:] == RANDOM


def test_level_none_stores_raw():
    framed = encode(COMPRESSIBLE, None)
    assert framed == bytes((RAW,)) + COMPRESSIBLE


@pytest.mark.parametrize("plain", [RANDOM, COMPRESSIBLE], ids=["raw", "zstd"])
@pytest.mark.parametrize("where", [1, -1, "middle"])
def test_flipped_byte_is_an_integrity_error_naming_the_object(plain, where):
    oid = chunk_id(plain)
    framed = bytearray(encode(plain))
    i = len(framed) // 2 if where == "middle" else where
    framed[i] ^= 0x01
    with pytest.raises(IntegrityError) as e:
        decode(oid, bytes(framed), "chunk")
    assert oid in str(e.value)
    assert "chunk" in str(e.value)


def test_right_bytes_under_the_wrong_id_are_rejected():
    other = chunk_id(b"something else")
    with pytest.raises(IntegrityError, match=other):
        decode(other, encode(b"payload"))


@pytest.mark.parametrize("framed", [b"", b"\x07payload", b"\x01not zstd at all"], ids=["empty", "codec", "zstd"])
def test_undecodable_frames_are_integrity_errors(framed):
    oid = chunk_id(b"payload")
    with pytest.raises(IntegrityError, match=oid):
        decode(oid, framed)


# ---------------------------------------------------------------- trees

def sample_entries() -> list[Entry]:
    return [
        Entry("b.txt", FILE, 0o644, 1_700_000_000_123_456_789, 5, [(chunk_id(b"hello"), 5)]),
        Entry("a-dir", DIR, 0o755, 1_600_000_000_000_000_000, tree=chunk_id(b"sub")),
        Entry("link", SYMLINK, 0o777, 42, target="../elsewhere"),
        Entry("empty", FILE, 0o600, 7, 0, []),
        Entry("multi", FILE, 0o755, 8, 11, [(chunk_id(b"hello"), 5), (chunk_id(b"world!"), 6)]),
    ]


def test_tree_encoding_is_deterministic_regardless_of_entry_order():
    entries = sample_entries()
    ids = set()
    for seed in range(6):
        shuffled = entries[:]
        random.Random(seed).shuffle(shuffled)
        tid, plain = Tree(shuffled).encode()
        assert tid == chunk_id(plain)
        ids.add((tid, plain))
    assert len(ids) == 1


def test_tree_round_trips_and_sorts_entries():
    tid, plain = Tree(sample_entries()).encode()
    tree = Tree.decode(tid, plain)
    assert [e.name for e in tree.entries] == sorted(e.name for e in sample_entries())
    assert {e.name: e for e in tree.entries} == {e.name: e for e in sample_entries()}


def test_any_change_to_an_entry_changes_the_tree_id():
    base, _ = Tree(sample_entries()).encode()
    for change in ({"mode": 0o600}, {"mtime_ns": 1}, {"name": "c.txt"}):
        entries = sample_entries()
        for k, v in change.items():
            setattr(entries[0], k, v)
        assert Tree(entries).encode()[0] != base, change


def encoded_tree_with(entry_doc: dict) -> tuple[str, bytes]:
    plain = canonical({"v": 1, "entries": [entry_doc]})
    return chunk_id(plain), plain


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "/etc", "/", "../x", "a\0b", "\0"])
@pytest.mark.parametrize("kind", [FILE, DIR, SYMLINK])
def test_tree_decode_rejects_unsafe_names(name, kind):
    entry = {FILE: Entry(name, FILE, size=0),
             DIR: Entry(name, DIR, tree=chunk_id(b"t")),
             SYMLINK: Entry(name, SYMLINK, target="x")}[kind]
    tid, plain = Tree([entry]).encode()  # encoding does not police names; decoding must
    with pytest.raises(UnsafeEntry) as e:
        Tree.decode(tid, plain)
    assert isinstance(e.value, IntegrityError)  # same exit code family: corrupted/unsafe data
    with pytest.raises(UnsafeEntry):
        check_name(name)


@pytest.mark.parametrize("name", ["a", "...", ".hidden", "with space", "ünïcödé", "a\\b", os.fsdecode(b"\xff\xfe")])
def test_safe_names_pass(name):
    check_name(name)


@pytest.mark.parametrize("raw", [b"caf\xe9", b"\xff\xfe", b"ok-\x80-\xc3(", "日本".encode("euc-jp")])
def test_non_utf8_names_round_trip_exactly(raw):
    name = os.fsdecode(raw)  # what os.scandir gives for such a name: surrogate escapes
    entries = [Entry(name, FILE, size=0), Entry("plain", FILE, size=0)]
    tid, plain = Tree(entries).encode()
    plain.decode("ascii")  # canonical bytes are plain ASCII JSON
    back = Tree.decode(tid, plain)
    names = {e.name for e in back.entries}
    assert name in names
    assert os.fsencode(name) == raw


def test_file_whose_chunk_lengths_do_not_add_up_is_rejected():
    tid, plain = encoded_tree_with({"name": "f", "kind": FILE, "mode": 0o644, "mtime_ns": 0, "size": 10,
                                    "chunks": [[chunk_id(b"12345"), 5]]})
    with pytest.raises(IntegrityError, match="do not add up"):
        Tree.decode(tid, plain)


@pytest.mark.parametrize("doc", [
    {"name": "f", "kind": "fifo", "mode": 0o644, "mtime_ns": 0},
    {"name": "f", "kind": FILE, "mode": 0o644, "mtime_ns": 0},  # no size, no chunks
    {"name": "f", "kind": DIR, "mode": 0o755},  # no mtime
    {"name": "f", "kind": FILE, "mode": "rw", "mtime_ns": 0, "size": 0, "chunks": []},
])
def test_malformed_entries_are_integrity_errors(doc):
    tid, plain = encoded_tree_with(doc)
    with pytest.raises(IntegrityError, match=tid):
        Tree.decode(tid, plain)


def test_duplicate_names_and_garbage_are_rejected():
    plain = canonical({"v": 1, "entries": [Entry("x", FILE).to_doc(), Entry("x", SYMLINK, target="y").to_doc()]})
    with pytest.raises(IntegrityError, match="duplicate"):
        Tree.decode(chunk_id(plain), plain)
    for junk in (b"not json", b"[1, 2]", b'{"v": 1}'):
        with pytest.raises(IntegrityError):
            Tree.decode(chunk_id(junk), junk)


def test_mode_is_masked_to_permission_bits():
    tid, plain = encoded_tree_with({"name": "f", "kind": FILE, "mode": 0o100755, "mtime_ns": 0, "size": 0,
                                    "chunks": []})
    assert Tree.decode(tid, plain).entries[0].mode == 0o755


# ---------------------------------------------------------------- snapshots


def test_snapshot_round_trip_and_deterministic_id():
    snap = Snapshot(dataset="genomes", tree=chunk_id(b"t"), parent=None, time="2026-01-02T03:04:05.000006Z",
                    host="h", message="first ✓", files=3, bytes=1234)
    sid, plain = snap.encode()
    assert sid == chunk_id(plain)
    assert Snapshot(**snap.__dict__).encode() == (sid, plain)
    assert Snapshot.decode(sid, plain) == snap
    child = Snapshot(**{**snap.__dict__, "parent": sid})
    assert child.encode()[0] != sid


def test_snapshot_with_unknown_fields_is_an_integrity_error():
    plain = json.dumps({"v": 1, "dataset": "d", "bogus": 1}).encode()
    with pytest.raises(IntegrityError):
        Snapshot.decode(chunk_id(plain), plain)


def test_mode_kind():
    assert mode_kind(stat.S_IFREG | 0o644) == FILE
    assert mode_kind(stat.S_IFDIR | 0o755) == DIR
    assert mode_kind(stat.S_IFLNK | 0o777) == SYMLINK
    for special in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
        assert mode_kind(special | 0o644) is None


def test_entry_xattrs_and_hard_links_round_trip():
    from nerdfs.objects import FILE, Entry, Tree

    e = Entry("f", FILE, 0o644, 1, 3, [("ab" * 32, 3)], xattrs={"user.k": b"\x00\xffv"}, link=42, nlink=2)
    tid, plain = Tree([e]).encode()
    back = Tree.decode(tid, plain).entries[0]
    assert (back.xattrs, back.link, back.nlink) == ({"user.k": b"\x00\xffv"}, 42, 2)
    # Entries without them encode exactly as before (ids of old trees stay valid).
    assert b"xattrs" not in Tree([Entry("g", FILE, 0o644, 1, 0, [])]).encode()[1]
