"""Archiver and Restorer: directories into the store and back, bit for bit, safely."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nerdfs import Archiver, Datasets, Repository, Restorer
from nerdfs.chunker import ChunkerParams, chunk_id
from nerdfs.errors import IntegrityError, NotFound, StoreError, UnsafeEntry, UsageError
from nerdfs.objects import DIR, FILE, SYMLINK, Entry, Tree, encode
from nerdfs.repo import CHUNK, object_key
from nerdfs.store import LocalStore, open_store

SMALL = ChunkerParams(min_size=16 * 1024, avg_size=64 * 1024, max_size=256 * 1024)
TINY = ChunkerParams(min_size=64, avg_size=256, max_size=1024)


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# ---------------------------------------------------------------- building and describing trees


def set_time(path: Path | bytes, ns: int) -> None:
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def finish_dir_times(root: Path) -> None:
    """Give every directory below ``root`` a distinct fixed mtime, deepest first (after its contents)."""
    broot = os.fsencode(root)
    for i, (dirpath, _dirs, _files) in enumerate(sorted(os.walk(broot), key=lambda w: -len(w[0]))):
        if dirpath != broot:
            set_time(dirpath, 1_500_000_000_000_000_000 + i * 1_000_000_007)


def make_varied_tree(root: Path) -> None:
    root.mkdir(parents=True)
    files = {
        "top.txt": (b"hello, nerd\n" * 300, 0o644),
        "empty.txt": (b"", 0o644),
        "exec.sh": (b"#!/bin/sh\necho hi\n", 0o755),
        "secret": (b"private", 0o600),
        ".hidden": (b"dotfile", 0o640),
        "big.bin": (rand(1_500_000, 1), 0o644),
        "dup1.bin": (rand(300_000, 2), 0o644),
        "dup2.bin": (rand(300_000, 2), 0o444),
        "repeat.bin": (rand(70_000, 3) * 6, 0o644),
        "nested/a/b/c/deep.txt": (b"deep", 0o644),
        "nested/a/side.txt": (b"side", 0o664),
        "ünï cödé ✓.txt": (b"unicode", 0o644),
    }
    for i, (rel, (data, mode)) in enumerate(sorted(files.items())):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.chmod(p, mode)
        set_time(p, 1_600_000_000_123_456_789 + i * 86_400_000_000_007)
    (root / "emptydir").mkdir(mode=0o700)
    (root / "nested" / "a" / "emptydir2").mkdir()
    os.chmod(root / "nested" / "a" / "emptydir2", 0o750)
    # Names that are not UTF-8, as a Linux file system allows.
    broot = os.fsencode(root)
    with open(os.path.join(broot, b"caf\xe9.txt"), "wb") as f:
        f.write(b"latin-1 name")
    os.mkdir(os.path.join(broot, b"\xff\xfe-dir"))
    with open(os.path.join(broot, b"\xff\xfe-dir", b"inner\x80.bin"), "wb") as f:
        f.write(rand(5000, 4))
    set_time(os.path.join(broot, b"caf\xe9.txt"), 1_234_567_890_000_000_001)
    # Symlinks: relative, dangling, absolute, to a directory, with a non-UTF-8 target.
    links = {"link": "top.txt", "dangling": "does/not/exist", "abslink": "/etc/hostname",
             "dirlink": "nested/a", "nested/a/up": "../../top.txt"}
    for i, (rel, target) in enumerate(links.items()):
        os.symlink(target, root / rel)
        set_time(root / rel, 1_400_000_000_000_000_000 + i)
    os.symlink(b"caf\xe9.txt", os.path.join(broot, b"latin-link"))
    finish_dir_times(root)


def describe(root: Path) -> dict[bytes, tuple]:
    """Everything a bit-for-bit restore must reproduce, keyed by relative path (bytes)."""
    broot = os.fsencode(root)
    out: dict[bytes, tuple] = {}
    for dirpath, dirs, files in os.walk(broot):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, broot)
            st_ = os.lstat(path)
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("symlink", os.readlink(path), st_.st_mtime_ns)
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st_.st_mode), st_.st_mtime_ns)
            elif stat.S_ISREG(st_.st_mode):
                with open(path, "rb") as f:
                    out[rel] = ("file", stat.S_IMODE(st_.st_mode), st_.st_mtime_ns, f.read())
            else:
                out[rel] = ("special", stat.S_IFMT(st_.st_mode))
    return out


def leftovers(root: Path) -> list[bytes]:
    return [os.path.join(d, n) for d, ds, fs in os.walk(os.fsencode(root)) for n in ds + fs
            if n.startswith(b".nerd-part-")]


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def clients(request, tmp_path):
    """A factory of clients (Repository objects with their own cache) of one store."""
    url = str(getattr(request, "param", "file"))
    opened: list[Repository] = []
    seq = itertools.count()
    if url == "s3":
        store_url, opts = request.getfixturevalue("s3_url"), request.getfixturevalue("s3_options")
    else:
        store_url, opts = f"file://{tmp_path}/store", None

    def client(chunker: ChunkerParams = SMALL, store=None) -> Repository:
        repo = Repository(store or open_store(store_url, opts), tmp_path / f"cache-{next(seq)}", chunker=chunker)
        opened.append(repo)
        return repo

    yield client
    for repo in opened:
        repo.close()


@pytest.fixture
def repo(clients):
    return clients()


def archive(repo: Repository, src: Path, **kw):
    return Archiver(repo, threads=4, **kw).archive(src)


def restore(repo: Repository, tree: str, target: Path, **kw):
    return Restorer(repo, threads=4).restore(tree, target, **kw)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("clients", ["file", pytest.param("s3", marks=pytest.mark.s3)], indirect=True)
def test_varied_tree_round_trips_bit_for_bit(clients, tmp_path):
    src = tmp_path / "src"
    make_varied_tree(src)
    expected = describe(src)
    uploader = clients()
    tree, stats = archive(uploader, src)
    assert (stats.files, stats.symlinks) == (14, 6)
    assert stats.dirs == 8  # root, emptydir, nested, a, b, c, emptydir2, \xff\xfe-dir
    assert stats.bytes_total == sum(len(v[3]) for v in expected.values() if v[0] == "file")
    assert stats.chunks_new < stats.chunks_total  # dup2 and the repeated blocks were not stored twice
    assert 0 < stats.bytes_new < stats.bytes_total
    assert stats.skipped == []
    ds = Datasets(uploader)
    sid, _ = ds.commit("varied", tree, parent=None, files=stats.files, size=stats.bytes_total)

    downloader = clients()  # another machine: empty index and cache
    name, got_sid, snap = Datasets(downloader).resolve(f"varied@{sid[:8]}")
    assert (name, got_sid, snap.tree) == ("varied", sid, tree)
    target = tmp_path / "restored"
    rstats = restore(downloader, snap.tree, target)
    assert describe(target) == expected
    assert (rstats.files, rstats.symlinks, rstats.bytes_total) == (14, 6, stats.bytes_total)
    assert leftovers(target) == []


def node_strategy():
    names = st.binary(min_size=1, max_size=12).filter(
        lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
    mtimes = st.integers(min_value=0, max_value=4_000_000_000_000_000_000)
    files = st.tuples(st.just("file"), st.one_of(st.binary(max_size=3000), st.binary(max_size=40).map(lambda b: b * 50)),
                      st.sampled_from([0o644, 0o600, 0o755, 0o400, 0o664]), mtimes)
    links = st.tuples(st.just("link"), st.binary(min_size=1, max_size=30).filter(lambda b: b"\0" not in b), mtimes)
    tree = st.recursive(
        st.one_of(files, links),
        lambda kids: st.tuples(st.just("dir"), st.dictionaries(names, kids, max_size=4),
                               st.sampled_from([0o755, 0o700, 0o750]), mtimes),
        max_leaves=12,
    )
    return st.dictionaries(names, tree, max_size=6)


def build(root: bytes, spec: dict) -> None:
    for name, node in spec.items():
        path = os.path.join(root, name)
        if node[0] == "file":
            with open(path, "wb") as f:
                f.write(node[1])
            os.chmod(path, node[2])
            set_time(path, node[3])
        elif node[0] == "link":
            os.symlink(node[1], path)
            set_time(path, node[2])
        else:
            os.mkdir(path)
            build(path, node[1])
            os.chmod(path, node[2])
            set_time(path, node[3])


_example = itertools.count()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=node_strategy())
def test_random_trees_round_trip_exactly(spec, tmp_path):
    n = next(_example)
    src, target = tmp_path / f"src-{n}", tmp_path / f"out-{n}"
    src.mkdir()
    build(os.fsencode(src), spec)
    expected = describe(src)
    store = tmp_path / "store"  # shared by all examples, like a real store
    try:
        with Repository(LocalStore(store), tmp_path / f"up-{n}", chunker=TINY) as up:
            tree, _ = archive(up, src)
        with Repository(LocalStore(store), tmp_path / f"down-{n}") as down:
            restore(down, tree, target)
        assert describe(target) == expected
    finally:
        for d in (src, target, tmp_path / f"up-{n}", tmp_path / f"down-{n}"):
            shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- deduplication and incremental uploads


def test_reupload_of_an_unchanged_tree_sends_nothing(clients, tmp_path):
    src = tmp_path / "src"
    make_varied_tree(src)
    repo = clients()
    tree, first = archive(repo, src)
    # Each distinct chunk went up exactly once, even the ones repeated inside and across files.
    stored = [p.stat().st_size for p in (tmp_path / "store" / "chunks").rglob("*") if p.is_file()]
    assert first.chunks_new == len(stored) < first.chunks_total
    assert first.bytes_uploaded == sum(stored) > 0
    tree2, again = archive(repo, src)
    assert tree2 == tree
    assert (again.bytes_uploaded, again.chunks_new, again.bytes_new) == (0, 0, 0)
    assert again.chunks_total == first.chunks_total
    # A different client (no local index) also finds everything already in the store.
    tree3, fresh = archive(clients(), src)
    assert tree3 == tree
    assert (fresh.bytes_uploaded, fresh.chunks_new) == (0, 0)


def test_editing_one_byte_sends_about_one_chunk(clients, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.bin").write_bytes(rand(2 * 1024 * 1024, 10))
    (src / "other.bin").write_bytes(rand(500_000, 11))
    repo = clients()
    tree1, first = archive(repo, src)
    assert first.chunks_new >= 10
    with open(src / "data.bin", "r+b") as f:
        f.seek(1_000_000)
        old = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([old[0] ^ 0xFF]))
    tree2, second = archive(repo, src)
    assert tree2 != tree1
    assert 1 <= second.chunks_new <= 2
    assert 0 < second.bytes_uploaded <= 2 * SMALL.max_size + 16
    assert second.bytes_uploaded < first.bytes_uploaded / 5
    target = tmp_path / "out"
    restore(clients(), tree2, target)
    assert (target / "data.bin").read_bytes() == (src / "data.bin").read_bytes()
    assert (target / "other.bin").read_bytes() == (src / "other.bin").read_bytes()


def test_same_size_rewrite_is_not_served_from_the_scan_cache(clients, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"A" * 5000)
    repo = clients()
    archive(repo, src)
    (src / "f").write_bytes(b"B" * 5000)  # same size, right away
    tree, stats = archive(repo, src)
    assert stats.chunks_new == 1
    restore(clients(), tree, tmp_path / "out")
    assert (tmp_path / "out" / "f").read_bytes() == b"B" * 5000


@pytest.mark.timeout(60)
def test_special_files_are_skipped_with_a_warning(clients, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "keep.txt").write_bytes(b"kept")
    os.mkfifo(src / "sub" / "pipe")
    warnings: list[str] = []
    repo = clients()
    tree, stats = Archiver(repo, threads=2, warn=warnings.append).archive(src)
    assert stats.skipped == ["sub/pipe"]
    assert len(warnings) == 1 and "pipe" in warnings[0] and "skipping" in warnings[0]
    assert stats.files == 1
    target = tmp_path / "out"
    restore(repo, tree, target)
    expected = {k: v for k, v in describe(src).items() if k != b"sub/pipe"}
    assert describe(target) == expected


def test_missing_source_is_not_found(repo, tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        archive(repo, tmp_path / "nope")


def test_source_that_is_a_file_is_a_usage_error(repo, tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(UsageError, match="not a directory"):
        archive(repo, tmp_path / "file")


# ---------------------------------------------------------------- corruption and unsafe trees


@pytest.mark.parametrize("damage", ["other-bytes", "flipped-byte", "truncated", "missing"])
def test_corrupted_chunk_fails_the_download_without_a_partial_file(clients, tmp_path, damage):
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_bytes(b"fine")
    (src / "big.bin").write_bytes(rand(1_000_000, 20))
    repo = clients()
    tree, _ = archive(repo, src)
    big = next(e for e in repo.get_tree(tree).entries if e.name == "big.bin")
    assert len(big.chunks) >= 4
    cid = big.chunks[len(big.chunks) // 2][0]
    path = tmp_path / "store" / object_key(CHUNK, cid)
    framed = path.read_bytes()
    if damage == "other-bytes":
        path.write_bytes(encode(b"some other bytes entirely"))
    elif damage == "flipped-byte":
        path.write_bytes(framed[:100] + bytes([framed[100] ^ 1]) + framed[101:])
    elif damage == "truncated":
        path.write_bytes(framed[: len(framed) // 2])
    else:
        path.unlink()

    target = tmp_path / "out"
    with pytest.raises(IntegrityError) as e:
        restore(clients(), tree, target)
    assert cid in str(e.value)
    assert not (target / "big.bin").exists()
    assert leftovers(target) == []


def evil_tree(repo: Repository, name: str, kind: str, nested: bool) -> str:
    data = b"evil!"
    cid = chunk_id(data)
    repo.put(CHUNK, cid, data)
    if kind == FILE:
        bad = Entry(name, FILE, 0o644, 0, len(data), [(cid, len(data))])
    elif kind == SYMLINK:
        bad = Entry(name, SYMLINK, 0o777, 0, target="/etc/passwd")
    else:
        bad = Entry(name, DIR, 0o755, 0, tree=repo.put_tree(Tree([Entry("f", FILE, 0o644, 0, 5, [(cid, 5)])]))[0])
    ok = Entry("ok.txt", FILE, 0o644, 0, len(data), [(cid, len(data))])
    tid, _ = repo.put_tree(Tree([ok, bad]))  # encoding does not check names: a hostile client could
    if nested:
        tid, _ = repo.put_tree(Tree([Entry("sub", DIR, 0o755, 0, tree=tid)]))
    return tid


def files_around(tmp_path: Path) -> set[bytes]:
    """Every path under ``tmp_path`` except the store, the clients' caches and the target."""
    base = os.fsencode(tmp_path)
    mine = (b"store", b"out") + tuple(n for n in os.listdir(base) if n.startswith(b"cache-"))
    return {os.path.join(d, n) for d, ds, fs in os.walk(base) for n in ds + fs
            if os.path.relpath(os.path.join(d, n), base).split(b"/")[0] not in mine}


@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
@pytest.mark.parametrize("kind", [FILE, SYMLINK, DIR])
@pytest.mark.parametrize("name", ["..", "/abs", "../escaped", ".", ""])
def test_unsafe_names_in_a_stored_tree_are_refused(clients, tmp_path, name, kind, nested):
    outside = tmp_path / "outside"
    outside.mkdir()
    if name == "/abs":
        name = str(outside / "abs-evil")
    writer = clients()
    tree = evil_tree(writer, name, kind, nested)
    reader = clients()  # decodes the tree from the store, like any other client
    before = files_around(tmp_path)
    target = tmp_path / "out"
    with pytest.raises(UnsafeEntry):
        restore(reader, tree, target)
    assert files_around(tmp_path) == before
    assert not any(outside.iterdir())
    assert not target.exists() or not any(target.iterdir())


# ---------------------------------------------------------------- interrupted uploads


class FailAfterStore:
    """Wraps a store: chunk PUTs fail with a StoreError once ``fail_after`` of them have succeeded."""

    def __init__(self, inner, fail_after: int | None) -> None:
        self.inner, self.url, self.fail_after = inner, inner.url, fail_after
        self.sent: dict[str, int] = {}
        self._lock = threading.Lock()

    def put(self, key, data):
        if key.startswith("chunks/"):
            with self._lock:
                if self.fail_after is not None and len(self.sent) >= self.fail_after:
                    raise StoreError(f"store {self.url}: injected failure")
                self.sent[key] = -1  # reserve the slot before the (slow) write
            self.inner.put(key, data)
            with self._lock:
                self.sent[key] = len(data)
            return
        self.inner.put(key, data)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("rerun", ["same-client", "new-client"])
def test_interrupted_upload_resumes_with_only_the_missing_chunks(clients, tmp_path, rerun):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}.bin").write_bytes(rand(700_000, 30 + i))
    (src / "small.txt").write_bytes(b"small")
    store_root = tmp_path / "store"
    flaky = FailAfterStore(LocalStore(store_root), fail_after=12)
    first = clients(store=flaky)
    with pytest.raises(StoreError, match="injected"):
        archive(first, src)
    sent_before = dict(flaky.sent)
    assert len(sent_before) == 12 and all(n > 0 for n in sent_before.values())
    assert Datasets(first).names() == []  # nothing was committed

    if rerun == "same-client":
        flaky.fail_after, flaky.sent = None, {}
        second_client, recorder = first, flaky
    else:
        recorder = FailAfterStore(LocalStore(store_root), fail_after=None)
        second_client = clients(store=recorder)
    tree, stats = archive(second_client, src)
    assert not set(recorder.sent) & set(sent_before), "a chunk was sent twice"
    assert stats.bytes_uploaded == sum(recorder.sent.values()) > 0
    stored = {str(p.relative_to(store_root)): p.stat().st_size for p in (store_root / "chunks").rglob("*")
              if p.is_file()}
    assert set(stored) == set(sent_before) | set(recorder.sent)
    assert stats.bytes_uploaded == sum(stored.values()) - sum(sent_before.values())
    assert stats.chunks_new == stats.chunks_total - 12

    target = tmp_path / "out"
    restore(clients(), tree, target)
    assert describe(target) == describe(src)


# ---------------------------------------------------------------- targets


def test_restore_refuses_a_non_empty_target_without_force(clients, tmp_path):
    src = tmp_path / "src"
    make_varied_tree(src)
    repo = clients()
    tree, _ = archive(repo, src)
    target = tmp_path / "out"
    target.mkdir()
    (target / "top.txt").write_bytes(b"stale local copy")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, target / "nested")  # where the snapshot has a directory
    with pytest.raises(UsageError, match="not empty"):
        restore(repo, tree, target)
    assert (target / "top.txt").read_bytes() == b"stale local copy"
    assert sorted(os.listdir(target)) == ["nested", "top.txt"]

    restore(repo, tree, target, force=True)
    assert describe(target) == describe(src)
    assert not any(outside.iterdir())  # nothing was written through the old symlink
    assert leftovers(target) == []


def test_restore_into_an_existing_empty_directory_and_over_a_file(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    tree, _ = archive(repo, src)
    empty = tmp_path / "empty"
    empty.mkdir()
    restore(repo, tree, empty)
    assert (empty / "a").read_bytes() == b"a"
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(UsageError, match="not a directory"):
        restore(repo, tree, tmp_path / "file")
    with pytest.raises(UsageError):
        restore(repo, tree, tmp_path / "file", force=True)
    assert (tmp_path / "file").read_bytes() == b"x"


def test_progress_reaches_the_totals(clients, tmp_path):
    src = tmp_path / "src"
    make_varied_tree(src)
    seen = []
    repo = clients()
    tree, stats = Archiver(repo, threads=2, progress=seen.append).archive(src)
    upload = [p for p in seen if p.phase == "upload"]
    assert upload and {p.phase for p in seen} <= {"scan", "upload"}
    last = upload[-1]
    assert (last.files_done, last.files_total) == (stats.files, stats.files)
    assert (last.bytes_done, last.bytes_total) == (stats.bytes_total, stats.bytes_total)
    assert last.bytes_sent == stats.bytes_uploaded
    seen.clear()
    Archiver(repo, threads=2, progress=seen.append).archive(src)  # from the scan cache
    last = seen[-1]
    assert (last.files_done, last.bytes_done, last.bytes_sent) == (stats.files, stats.bytes_total, 0)
    seen.clear()
    rstats = Restorer(clients(), threads=2, progress=seen.append).restore(tree, tmp_path / "out")
    last = seen[-1]
    assert last.phase == "download"
    assert (last.files_done, last.files_total) == (rstats.files, rstats.files)
    assert last.bytes_done == last.bytes_total == stats.bytes_total
