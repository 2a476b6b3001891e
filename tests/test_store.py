"""Stores: one behaviour suite for the local folder and a real S3 server, plus S3 errors and retries."""

from __future__ import annotations

import socket
import threading

import pytest

from nerdfs.errors import ConfigError, ObjectNotFound, RefConflict, StoreError, TransientStoreError
from nerdfs.store import LocalStore, RetryingStore, S3Options, S3Store, open_store


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request, tmp_path):
    if request.param == "local":
        s = LocalStore(tmp_path / "store")
    else:
        bucket = request.getfixturevalue("s3_bucket")
        s = S3Store(bucket, "some/prefix", request.getfixturevalue("s3_options"))
    yield s
    s.close()


# ---------------------------------------------------------------- the common suite


def test_put_get_exists_delete(store):
    key = "chunks/ab/abcdef"
    assert not store.exists(key)
    store.put(key, b"payload")
    assert store.exists(key)
    assert store.get(key) == b"payload"
    store.put(key, b"payload")  # content-addressed objects may be written again
    assert store.get(key) == b"payload"
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # deleting a missing object is not an error


def test_binary_and_empty_objects(store):
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    store.put("chunks/00/big", data)
    store.put("chunks/00/empty", b"")
    assert store.get("chunks/00/big") == data
    assert store.get("chunks/00/empty") == b""
    assert store.exists("chunks/00/empty")


def test_missing_object_is_object_not_found(store):
    with pytest.raises(ObjectNotFound) as e:
        store.get("trees/ff/missing")
    assert e.value.key == "trees/ff/missing"
    assert "trees/ff/missing" in str(e.value)
    assert store.get_versioned("refs/nothing") is None


def test_list_by_prefix(store):
    keys = {"chunks/aa/aa01", "chunks/aa/aa02", "chunks/ab/ab01", "trees/aa/aa03", "refs/genomes", "refs/gen2"}
    for k in keys:
        store.put(k, k.encode())
    assert set(store.list("chunks/")) == {k for k in keys if k.startswith("chunks/")}
    assert set(store.list("chunks/aa/")) == {"chunks/aa/aa01", "chunks/aa/aa02"}
    assert set(store.list("refs/")) == {"refs/genomes", "refs/gen2"}
    assert set(store.list("refs/gen")) == {"refs/genomes", "refs/gen2"}
    assert set(store.list("snapshots/")) == set()
    store.delete("chunks/aa/aa01")
    assert set(store.list("chunks/aa/")) == {"chunks/aa/aa02"}


def test_put_if_create_only(store):
    store.put_if("refs/d", b"first", None)
    assert store.get("refs/d") == b"first"
    with pytest.raises(RefConflict):
        store.put_if("refs/d", b"second", None)
    assert store.get("refs/d") == b"first"


def test_put_if_compare_and_swap(store):
    store.put_if("refs/d", b"v1", None)
    data, v1 = store.get_versioned("refs/d")
    assert data == b"v1"
    store.put_if("refs/d", b"v2", v1)
    data, v2 = store.get_versioned("refs/d")
    assert data == b"v2" and v2 != v1
    with pytest.raises(RefConflict):
        store.put_if("refs/d", b"stale", v1)  # someone else moved it since we read v1
    assert store.get("refs/d") == b"v2"
    store.put_if("refs/d", b"v3", v2)
    assert store.get("refs/d") == b"v3"


def test_put_if_with_a_version_on_a_missing_ref_conflicts(store):
    store.put_if("refs/d", b"v1", None)
    _, v1 = store.get_versioned("refs/d")
    store.delete("refs/d")
    with pytest.raises(RefConflict):
        store.put_if("refs/d", b"v2", v1)
    assert not store.exists("refs/d")


def test_compare_and_swap_has_exactly_one_winner(store):
    """Racing writers with the same version token: one wins, everyone else gets RefConflict."""
    store.put_if("refs/race", b"start", None)
    for round_ in range(3):
        _, version = store.get_versioned("refs/race")
        winners, errors = [], []
        barrier = threading.Barrier(6)

        def race(i: int) -> None:
            try:
                barrier.wait()
                store.put_if("refs/race", f"{round_}-{i}".encode(), version)
                winners.append(i)
            except RefConflict:
                pass
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(winners) == 1, winners
        assert store.get("refs/race") == f"{round_}-{winners[0]}".encode()


# ---------------------------------------------------------------- local specifics


def test_local_store_layout_and_no_temp_leftovers(tmp_path):
    s = LocalStore(tmp_path / "st")
    s.put("chunks/ab/abc", b"x")
    s.put_if("refs/d", b"y", None)
    assert (tmp_path / "st" / "chunks" / "ab" / "abc").read_bytes() == b"x"
    assert (tmp_path / "st" / "refs" / "d").read_bytes() == b"y"
    assert not [p for p in (tmp_path / "st").rglob(".tmp-*")]
    (tmp_path / "st" / "chunks" / "ab" / ".tmp-abd-1234").write_bytes(b"half written")
    assert set(s.list("chunks/")) == {"chunks/ab/abc"}


def test_local_store_on_a_file_is_a_store_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot create"):
        LocalStore(tmp_path / "file" / "store")


# ---------------------------------------------------------------- open_store


def test_open_store_urls(tmp_path):
    s = open_store(f"file://{tmp_path}/a")
    assert isinstance(s, RetryingStore) and isinstance(s.inner, LocalStore)
    assert s.inner.root == tmp_path / "a"
    s.put("k", b"v")
    assert (tmp_path / "a" / "k").read_bytes() == b"v"
    plain = open_store(str(tmp_path / "b"))
    assert plain.inner.root == tmp_path / "b"
    s3 = open_store("s3://bucket/pre/fix", S3Options(endpoint_url="http://127.0.0.1:1", access_key_id="a",
                                                      secret_access_key="b"))
    assert isinstance(s3.inner, S3Store)
    assert (s3.inner.bucket, s3.inner.prefix, s3.url) == ("bucket", "pre/fix/", "s3://bucket/pre/fix")


@pytest.mark.parametrize("url", ["ftp://host/x", "file://host/x", "s3:///nobucket", ""])
def test_open_store_rejects_bad_urls(url):
    with pytest.raises(ConfigError):
        open_store(url)


@pytest.mark.s3
def test_s3_prefixes_isolate_stores(s3_bucket, s3_options):
    a = S3Store(s3_bucket, "a", s3_options)
    b = S3Store(s3_bucket, "/b/", s3_options)
    a.put("refs/x", b"A")
    b.put("refs/x", b"B")
    assert (a.get("refs/x"), b.get("refs/x")) == (b"A", b"B")
    assert list(a.list("refs/")) == ["refs/x"]
    whole = S3Store(s3_bucket, "", s3_options)
    assert set(whole.list("")) == {"a/refs/x", "b/refs/x"}


# ---------------------------------------------------------------- S3 errors


@pytest.mark.s3
def test_s3_missing_bucket_says_so(seaweed, s3_options, tmp_path):
    s = S3Store("no-such-bucket-here", "p", s3_options)
    for op in (lambda: s.get("k"), lambda: s.put("k", b"x"), lambda: list(s.list("refs/")),
               lambda: s.get_versioned("refs/d"), lambda: s.put_if("refs/d", b"x", None)):
        with pytest.raises(StoreError) as e:
            op()
        assert not isinstance(e.value, (TransientStoreError, ObjectNotFound))
        assert "no-such-bucket-here" in str(e.value)
        assert "does not exist" in str(e.value)
    from nerdfs.repo import Repository

    with pytest.raises(StoreError, match="bucket 'no-such-bucket-here' does not exist"):
        Repository.open("s3://no-such-bucket-here/nerd", s3=s3_options, cache_dir=tmp_path / "cache",
                        retry_attempts=2)


@pytest.mark.s3
def test_s3_wrong_secret_is_access_denied(s3_bucket, s3_options):
    bad = S3Options(endpoint_url=s3_options.endpoint_url, access_key_id=s3_options.access_key_id,
                    secret_access_key="not-the-secret")
    s = S3Store(s3_bucket, "p", bad)
    for op in (lambda: s.get("k"), lambda: s.put("k", b"x"), lambda: s.exists("k"), lambda: list(s.list(""))):
        with pytest.raises(StoreError) as e:
            op()
        assert not isinstance(e.value, (TransientStoreError, ObjectNotFound))
        assert "access denied" in str(e.value)


@pytest.mark.s3
def test_s3_unreachable_endpoint_is_transient_after_retries(seaweed):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    opts = S3Options(endpoint_url=f"http://127.0.0.1:{port}", access_key_id="a", secret_access_key="b",
                     connect_timeout=1)
    s = open_store("s3://bucket/p", opts, retry_attempts=2)
    calls = []
    inner_get = s.inner.get
    s.inner.get = lambda key: calls.append(key) or inner_get(key)
    with pytest.raises(TransientStoreError) as e:
        s.get("refs/x")
    assert "cannot reach" in str(e.value)
    assert calls == ["refs/x", "refs/x"]


# ---------------------------------------------------------------- RetryingStore logic


class FlakyStore:
    """A fake inner store whose calls fail with the given errors first, then succeed."""

    url = "fake://flaky"

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = list(errors)
        self.calls: list[str] = []
        self.data: dict[str, bytes] = {}

    def _step(self, op: str) -> None:
        self.calls.append(op)
        if self.errors:
            raise self.errors.pop(0)

    def get(self, key):
        self._step("get")
        return self.data[key]

    def put(self, key, data):
        self._step("put")
        self.data[key] = data

    def exists(self, key):
        self._step("exists")
        return key in self.data

    def list(self, prefix):
        self._step("list")
        yield from (k for k in self.data if k.startswith(prefix))

    def delete(self, key):
        self._step("delete")
        self.data.pop(key, None)

    def get_versioned(self, key):
        self._step("get_versioned")
        return (self.data[key], "v") if key in self.data else None

    def put_if(self, key, data, version):
        self._step("put_if")
        self.data[key] = data

    def close(self):
        pass


def retrying(inner, attempts=5):
    sleeps: list[float] = []
    return RetryingStore(inner, attempts=attempts, base_delay=0.1, max_delay=0.3, sleep=sleeps.append), sleeps


def test_retries_transient_errors_then_succeeds():
    inner = FlakyStore([TransientStoreError("503"), TransientStoreError("timeout"), TransientStoreError("reset")])
    s, sleeps = retrying(inner)
    s.put("k", b"v")
    assert inner.calls == ["put"] * 4
    assert inner.data == {"k": b"v"}
    assert len(sleeps) == 3
    # exponential backoff with jitter, capped at max_delay
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2 and 0.15 <= sleeps[2] <= 0.3


@pytest.mark.parametrize("op", ["get", "exists", "list", "delete", "get_versioned", "put_if"])
def test_every_operation_is_retried(op):
    inner = FlakyStore([TransientStoreError("503")])
    inner.data["k"] = b"v"
    s, sleeps = retrying(inner)
    call = {"get": lambda: s.get("k"), "exists": lambda: s.exists("k"), "list": lambda: list(s.list("")),
            "delete": lambda: s.delete("k"), "get_versioned": lambda: s.get_versioned("k"),
            "put_if": lambda: s.put_if("k", b"w", "v")}[op]
    result = call()
    assert inner.calls == [op, op]
    assert len(sleeps) == 1
    if op == "list":
        assert result == ["k"]
    if op == "get":
        assert result == b"v"


def test_gives_up_after_the_last_attempt():
    inner = FlakyStore([TransientStoreError(f"503 #{i}") for i in range(10)])
    s, sleeps = retrying(inner, attempts=3)
    with pytest.raises(TransientStoreError, match="#2"):
        s.get("k")
    assert inner.calls == ["get"] * 3
    assert len(sleeps) == 2


@pytest.mark.parametrize("err", [StoreError("access denied"), RefConflict("refs/d changed"),
                                 ObjectNotFound("k", "fake://flaky")])
def test_permanent_errors_are_not_retried(err):
    inner = FlakyStore([err])
    s, sleeps = retrying(inner)
    with pytest.raises(type(err)):
        s.put_if("k", b"v", None)
    assert inner.calls == ["put_if"]
    assert sleeps == []


# ---------------------------------------------------------------- a repository on a store


def test_repository_config_is_fixed_per_store(store, tmp_path):
    from nerdfs.chunker import ChunkerParams
    from nerdfs.repo import Repository

    small = ChunkerParams(min_size=1024, avg_size=4096, max_size=16384)
    first = Repository(store, tmp_path / "c1", chunker=small)
    # A second client asking for other params gets the store's: every client must cut alike.
    second = Repository(store, tmp_path / "c2", chunker=ChunkerParams())
    try:
        assert second.config.chunker == small
        assert second.id == first.id
        data = bytes(range(256)) * 200
        assert [p.id for p in first.chunker.cut(data)] == [p.id for p in second.chunker.cut(data)]
    finally:
        first.index.close()
        second.index.close()


def test_repository_open_refuses_what_it_cannot_use(tmp_path):
    from nerdfs.errors import ConfigError
    from nerdfs.repo import Repository

    with pytest.raises(StoreError, match="not a nerd store"):
        Repository(LocalStore(tmp_path / "empty"), tmp_path / "c", create=False)
    newer = LocalStore(tmp_path / "newer")
    newer.put("config", b'{"version": 99, "id": "x", "chunker": {}}')
    with pytest.raises(ConfigError, match="upgrade nerd"):
        Repository(newer, tmp_path / "c")
    junk = LocalStore(tmp_path / "junk")
    junk.put("config", b"<html>not json</html>")
    with pytest.raises(ConfigError, match="malformed"):
        Repository(junk, tmp_path / "c")


def test_repository_reads_are_verified_and_writes_deduplicated(tmp_path):
    from nerdfs.chunker import chunk_id
    from nerdfs.errors import IntegrityError
    from nerdfs.repo import CHUNK, Repository, object_key

    store = LocalStore(tmp_path / "store")
    with Repository(store, tmp_path / "c1") as repo:
        data = b"chunk data " * 100
        cid = chunk_id(data)
        assert repo.put(CHUNK, cid, data) > 0
        assert repo.put(CHUNK, cid, data) == 0  # known: not sent again
        assert repo.get(CHUNK, cid) == data
    with Repository(LocalStore(tmp_path / "store"), tmp_path / "c2") as other:
        assert other.put(CHUNK, cid, data, check=True) == 0  # asked the store: it has it, not sent again
        (tmp_path / "store" / object_key(CHUNK, cid)).write_bytes(b"\x00" + b"x" * len(data))
        with pytest.raises(IntegrityError, match=cid):
            other.get(CHUNK, cid)
        missing = chunk_id(b"never stored")
        with pytest.raises(IntegrityError, match=f"chunk {missing} is missing"):
            other.get(CHUNK, missing)
