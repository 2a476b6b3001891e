"""Datasets: names, commits and refs, log, resolve, delete, and commits that race."""

from __future__ import annotations

import json
import threading

import pytest

from nerdfs.chunker import ChunkerParams, chunk_id
from nerdfs.datasets import CommitConflict, Datasets, check_dataset_name
from nerdfs.errors import Conflict, NotFound, RefConflict, UsageError
from nerdfs.objects import DIR, FILE, Entry, Snapshot, Tree
from nerdfs.repo import CHUNK, SNAPSHOT, Repository
from nerdfs.store import LocalStore, open_store

SMALL = ChunkerParams(min_size=1024, avg_size=4096, max_size=16384)


def write_tree(repo: Repository, spec: dict) -> str:
    """Store a tree described as {name: bytes (a file) | dict (a directory)}; its id."""
    entries = []
    for name, value in spec.items():
        if isinstance(value, dict):
            entries.append(Entry(name, DIR, 0o755, 1, tree=write_tree(repo, value)))
        else:
            chunks = []
            if value:
                cid = chunk_id(value)
                repo.put(CHUNK, cid, value)
                chunks = [(cid, len(value))]
            entries.append(Entry(name, FILE, 0o644, 1, len(value), chunks))
    return repo.put_tree(Tree(entries))[0]


def read_tree(repo: Repository, tid: str) -> dict:
    out = {}
    for e in repo.get_tree(tid).entries:
        if e.kind == DIR:
            out[e.name] = read_tree(repo, e.tree)
        else:
            out[e.name] = b"".join(repo.get(CHUNK, c) for c, _ in e.chunks)
    return out


def head_tree(ds: Datasets, name: str) -> dict:
    head = ds.head(name)
    return read_tree(ds.repo, ds.repo.get_snapshot(head.snapshot).tree)


@pytest.fixture
def store_root(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def repo(store_root, tmp_path):
    r = Repository(LocalStore(store_root), tmp_path / "cache-a", chunker=SMALL)
    yield r
    r.close()


@pytest.fixture
def other_repo(store_root, tmp_path, repo):
    """A second client of the same store, with its own index and cache."""
    r = Repository(LocalStore(store_root), tmp_path / "cache-b")
    yield r
    r.close()


@pytest.fixture
def ds(repo):
    return Datasets(repo)


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["a", "genomes", "Run-2024_01.final", "0day", "x" * 128])
def test_valid_dataset_names(name):
    assert check_dataset_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "_x", "a/b", "..", ".", "x" * 129, "with space", "tab\t",
                                  "é", "a:b", "a@b", "new\nline"])
def test_invalid_dataset_names(name, ds):
    with pytest.raises(UsageError, match="invalid dataset name"):
        check_dataset_name(name)
    with pytest.raises(UsageError):
        ds.commit(name, write_tree(ds.repo, {}), parent=None)
    assert list(ds.repo.store.list("refs/")) == []


# ---------------------------------------------------------------- commits and refs


def test_commit_creates_ref_with_generation(ds, repo):
    t1 = write_tree(repo, {"a.txt": b"one"})
    assert ds.head("genomes") is None
    sid1, snap1 = ds.commit("genomes", t1, parent=None, message="first", files=1, size=3)
    head = ds.head("genomes")
    assert (head.snapshot, head.generation) == (sid1, 1)
    assert (snap1.dataset, snap1.tree, snap1.parent, snap1.message, snap1.files, snap1.bytes) == \
        ("genomes", t1, None, "first", 1, 3)
    assert repo.get_snapshot(sid1) == snap1  # the snapshot object is in the store, verified
    assert json.loads(repo.store.get("refs/genomes")) == {"snapshot": sid1, "generation": 1}

    t2 = write_tree(repo, {"a.txt": b"two"})
    sid2, snap2 = ds.commit("genomes", t2, parent=sid1, message="second")
    head = ds.head("genomes")
    assert (head.snapshot, head.generation) == (sid2, 2)
    assert snap2.parent == sid1
    assert ds.names() == ["genomes"]


def test_names_lists_every_dataset(ds, repo):
    t = write_tree(repo, {})
    for name in ("b", "a", "c.d"):
        ds.commit(name, t, parent=None)
    assert ds.names() == ["a", "b", "c.d"]


def test_log_walks_parents_newest_first(ds, repo):
    sids = []
    parent = None
    for i in range(4):
        parent, _ = ds.commit("d", write_tree(repo, {"f": str(i).encode()}), parent=parent, message=f"m{i}")
        sids.append(parent)
    log = list(ds.log("d"))
    assert [sid for sid, _ in log] == sids[::-1]
    assert [s.message for _, s in log] == ["m3", "m2", "m1", "m0"]
    assert [s.parent for _, s in log] == [sids[2], sids[1], sids[0], None]
    assert [sid for sid, _ in ds.log("d", limit=2)] == sids[:1:-1]
    with pytest.raises(NotFound):
        list(ds.log("nope"))


def test_resolve(ds, repo):
    s1, _ = ds.commit("d", write_tree(repo, {"f": b"1"}), parent=None)
    s2, snap2 = ds.commit("d", write_tree(repo, {"f": b"2"}), parent=s1)
    assert ds.resolve("d") == ("d", s2, snap2)
    assert ds.resolve(f"d@{s1}")[1] == s1
    assert ds.resolve(f"d@{s1[:8]}")[1] == s1
    assert ds.resolve(f"d@{s1[:8].upper()}")[1] == s1
    assert ds.resolve(f"d@{s2[:6]}")[:2] == ("d", s2)
    with pytest.raises(NotFound):
        ds.resolve("missing")
    with pytest.raises(NotFound, match="no snapshot"):
        ds.resolve("d@" + ("0" if s1[0] != "0" and s2[0] != "0" else "1") * 10)
    for bad in ("d@abc", "d@xyz123", "d@12-4"):
        with pytest.raises(UsageError):
            ds.resolve(bad)


def test_resolve_full_id_of_another_dataset_is_not_found(ds, repo):
    t = write_tree(repo, {})
    a, _ = ds.commit("a", t, parent=None)
    ds.commit("b", write_tree(repo, {"x": b""}), parent=None)
    with pytest.raises(NotFound):
        ds.resolve(f"b@{a}")


def test_resolve_ambiguous_prefix(ds, repo):
    """Two snapshots in one log whose ids share 4 hex digits: the short prefix is refused."""
    tree = write_tree(repo, {})
    first = Snapshot("d", tree, None, "2026-01-01T00:00:00.000000Z", "host", "first")
    s1 = repo.put_snapshot(first)
    for i in range(2_000_000):  # deterministic search: the same i every run
        second = Snapshot("d", tree, s1, "2026-01-01T00:00:01.000000Z", "host", f"second {i}")
        s2, _ = second.encode()
        if s2[:4] == s1[:4]:
            break
    else:
        pytest.fail("no colliding prefix found")
    repo.put_snapshot(second)
    repo.store.put_if("refs/d", json.dumps({"snapshot": s2, "generation": 2}).encode(), None)
    with pytest.raises(UsageError, match="ambiguous"):
        ds.resolve(f"d@{s1[:4]}")
    assert ds.resolve(f"d@{s1[:12]}")[1] == s1
    assert ds.resolve(f"d@{s2[:12]}")[1] == s2


def test_delete(ds, repo):
    s1, _ = ds.commit("d", write_tree(repo, {"f": b"x"}), parent=None)
    ds.commit("keep", write_tree(repo, {}), parent=None)
    assert ds.delete("d") == s1
    assert ds.head("d") is None
    assert ds.names() == ["keep"]
    assert repo.has(SNAPSHOT, s1)  # objects stay until gc
    with pytest.raises(NotFound):
        ds.delete("d")
    with pytest.raises(NotFound):
        list(ds.log("d"))
    # The name can be used again from scratch.
    s2, snap = ds.commit("d", write_tree(repo, {"g": b"y"}), parent=None)
    assert snap.parent is None and ds.head("d").generation == 1


# ---------------------------------------------------------------- racing commits


BASE = {"a.txt": b"a0", "b.txt": b"b0", "sub": {"x": b"x0", "y": b"y0"}}


@pytest.fixture
def based(ds, repo):
    sid, _ = ds.commit("d", write_tree(repo, BASE), parent=None)
    return sid


def test_racing_commits_to_different_files_both_survive(based, ds, repo, other_repo):
    theirs = Datasets(other_repo)
    old = ds.head("d").snapshot
    assert theirs.head("d").snapshot == old
    mine = write_tree(repo, {**BASE, "a.txt": b"a-mine", "sub": {**BASE["sub"], "x": b"x-mine"}, "new": b"n"})
    other = write_tree(other_repo, {**BASE, "b.txt": b"b-theirs", "sub": {"x": b"x0", "y": b"y-theirs"}})
    s_mine, _ = ds.commit("d", mine, parent=old, message="mine")
    s_theirs, snap = theirs.commit("d", other, parent=old, message="theirs")  # merged on top of mine

    assert snap.parent == s_mine
    head = ds.head("d")
    assert head.snapshot == s_theirs and head.generation == 3
    assert head_tree(ds, "d") == {"a.txt": b"a-mine", "b.txt": b"b-theirs", "new": b"n",
                                  "sub": {"x": b"x-mine", "y": b"y-theirs"}}
    log = [(sid, s.message) for sid, s in ds.log("d")]
    assert log == [(s_theirs, "theirs"), (s_mine, "mine"), (old, "")]


def test_racing_deletion_and_addition_merge(based, ds, repo, other_repo):
    old = ds.head("d").snapshot
    without_a = {k: v for k, v in BASE.items() if k != "a.txt"}
    ds.commit("d", write_tree(repo, without_a), parent=old)
    Datasets(other_repo).commit("d", write_tree(other_repo, {**BASE, "c.txt": b"c"}), parent=old)
    assert head_tree(ds, "d") == {**without_a, "c.txt": b"c"}


@pytest.mark.parametrize("theirs_change", ["edit", "delete"])
def test_racing_commits_to_the_same_file_conflict_and_keep_the_snapshot(based, ds, repo, other_repo,
                                                                         theirs_change):
    theirs = Datasets(other_repo)
    old = ds.head("d").snapshot
    s_mine, _ = ds.commit("d", write_tree(repo, {**BASE, "sub": {"x": b"x-mine", "y": b"y0"}}), parent=old)
    other_sub = {"x": b"x-theirs", "y": b"y0"} if theirs_change == "edit" else {"y": b"y0"}
    other_tree = write_tree(other_repo, {**BASE, "b.txt": b"b-theirs", "sub": other_sub})
    with pytest.raises(CommitConflict) as e:
        theirs.commit("d", other_tree, parent=old, message="theirs")
    c = e.value
    assert c.exit_code == 5 and isinstance(c, Conflict)
    assert c.path == "/sub/x"
    assert c.dataset == "d" and c.head == s_mine
    assert c.snapshot in str(c) and "/sub/x" in str(c)
    # Never lost: their snapshot is in the store, readable by anyone, with their tree.
    saved = repo.get_snapshot(c.snapshot)
    assert (saved.tree, saved.parent, saved.message) == (other_tree, old, "theirs")
    assert repo.has(SNAPSHOT, c.snapshot)
    # And the head did not move.
    head = ds.head("d")
    assert (head.snapshot, head.generation) == (s_mine, 2)
    # The id in the message is enough to get the saved version back.
    assert ds.resolve(f"d@{c.snapshot}")[1:] == (c.snapshot, saved)


class RaceStore:
    """Wraps a store: runs ``hook`` once, just before the first conditional write of a ref."""

    def __init__(self, inner, hook):
        self.inner, self.hook, self.url = inner, hook, inner.url

    def put_if(self, key, data, version):
        if key.startswith("refs/") and self.hook:
            hook, self.hook = self.hook, None
            hook()
        return self.inner.put_if(key, data, version)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_commit_that_loses_the_race_twice_keeps_everyones_changes(based, ds, repo, store_root, tmp_path):
    """B rebases on A's commit, then C commits before B's ref write: B must rebase on C, not drop A."""
    old = ds.head("d").snapshot
    # B: a second client whose first ref write is preceded by C's commit.
    def c_commits():
        head = ds.head("d").snapshot
        tree = read_tree(repo, repo.get_snapshot(head).tree)
        ds.commit("d", write_tree(repo, {**tree, "c.txt": b"from C"}), parent=head, message="C")

    b_repo = Repository(RaceStore(LocalStore(store_root), c_commits), tmp_path / "cache-c")
    try:
        b = Datasets(b_repo)
        b_tree = write_tree(b_repo, {**BASE, "b.txt": b"from B"})
        ds.commit("d", write_tree(repo, {**BASE, "a.txt": b"from A"}), parent=old, message="A")  # A wins first
        b.commit("d", b_tree, parent=old, message="B")  # rebases on A, loses to C, rebases on C
    finally:
        b_repo.close()
    assert head_tree(ds, "d") == {**BASE, "a.txt": b"from A", "b.txt": b"from B", "c.txt": b"from C"}
    assert [s.message for _, s in ds.log("d")] == ["B", "C", "A", ""]
    assert ds.head("d").generation == 4


def test_commit_on_a_dataset_deleted_meanwhile(based, ds, repo, other_repo):
    old = ds.head("d").snapshot
    Datasets(other_repo).delete("d")
    sid, snap = ds.commit("d", write_tree(repo, {"only": b"mine"}), parent=old)
    assert snap.parent is None
    assert head_tree(ds, "d") == {"only": b"mine"}


@pytest.mark.s3
def test_concurrent_commits_on_s3_lose_nothing(s3_url, s3_options, tmp_path):
    threads_n, per_thread = 4, 3
    setup = Repository(open_store(s3_url, s3_options), tmp_path / "cache-setup", chunker=SMALL)
    base_sid, _ = Datasets(setup).commit("shared", write_tree(setup, {"base": b"0"}), parent=None)
    setup.close()

    committed: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads_n)

    def client(i: int) -> None:
        repo = Repository(open_store(s3_url, s3_options), tmp_path / f"cache-{i}")
        try:
            ds = Datasets(repo)
            barrier.wait()
            for k in range(per_thread):
                head = ds.head("shared")
                files = read_tree(repo, repo.get_snapshot(head.snapshot).tree)
                files[f"t{i}-{k}"] = f"thread {i} commit {k}".encode()
                sid, _ = ds.commit("shared", write_tree(repo, files), parent=head.snapshot,
                                   message=f"t{i}-{k}")
                with lock:
                    committed.append(sid)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            repo.close()

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []

    repo = Repository(open_store(s3_url, s3_options), tmp_path / "cache-check")
    try:
        ds = Datasets(repo)
        log = list(ds.log("shared"))
        log_ids = [sid for sid, _ in log]
        assert set(committed) <= set(log_ids), "a commit is not reachable from the head"
        assert log_ids[-1] == base_sid
        assert ds.head("shared").generation == len(log_ids) == threads_n * per_thread + 1
        expected = {"base": b"0"} | {f"t{i}-{k}": f"thread {i} commit {k}".encode()
                                     for i in range(threads_n) for k in range(per_thread)}
        assert head_tree(ds, "shared") == expected
    finally:
        repo.close()


def test_too_many_conflicts_is_a_conflict_that_keeps_the_snapshot(based, ds, repo):
    class AlwaysConflicts:
        def __init__(self, inner):
            self.inner, self.url = inner, inner.url

        def put_if(self, key, data, version):
            raise RefConflict(f"{key} changed concurrently")

        def __getattr__(self, name):
            return getattr(self.inner, name)

    ds2 = Datasets(repo)
    ds2.store = AlwaysConflicts(repo.store)
    old = ds.head("d").snapshot
    with pytest.raises(Conflict) as e:
        ds2.commit("d", write_tree(repo, {"z": b"z"}), parent=old, max_attempts=3)
    sid = str(e.value).rsplit(" ", 1)[-1]
    assert repo.get_snapshot(sid).tree == write_tree(repo, {"z": b"z"})
    assert ds.head("d").snapshot == old


def test_commit_whose_ref_write_answer_was_lost_is_not_duplicated(based, ds, repo, store_root, tmp_path):
    """The ref write lands but the reply is lost (a timeout): the retry sees a 'conflict' with itself."""
    from nerdfs.errors import TransientStoreError
    from nerdfs.store import RetryingStore

    class LostReply:
        def __init__(self, inner):
            self.inner, self.url, self.lost = inner, inner.url, False

        def put_if(self, key, data, version):
            self.inner.put_if(key, data, version)
            if key.startswith("refs/") and not self.lost:
                self.lost = True
                raise TransientStoreError("read timeout after the request was sent")

        def __getattr__(self, name):
            return getattr(self.inner, name)

    store = RetryingStore(LostReply(LocalStore(store_root)), attempts=3, base_delay=0, sleep=lambda s: None)
    client = Repository(store, tmp_path / "cache-lost")
    try:
        old = ds.head("d").snapshot
        sid, snap = Datasets(client).commit("d", write_tree(client, {"new": b"x"}), parent=old, message="once")
    finally:
        client.close()
    head = ds.head("d")
    assert (head.snapshot, head.generation) == (sid, 2)
    assert snap.parent == old
    assert [s.message for _, s in ds.log("d")] == ["once", ""]
