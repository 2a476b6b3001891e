"""The mount as users use it: real FUSE, real programs, real stores."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                                reason="needs /dev/fuse and root")


def nerdfs(*args: str, home: Path, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "NERD_HOME": str(home)}
    r = subprocess.run([sys.executable, "-m", "nerdfs", *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def download(store: str, dataset: str, out: Path, home: Path) -> None:
    """What another machine sees: `nerd dataset download` straight from the store."""
    env = {**os.environ, "NERD_HOME": str(home), "NERD_STORE": store}
    subprocess.run([sys.executable, "-m", "nerdcli", "dataset", "download", dataset, str(out)], check=True, env=env)


class Mounted:
    def __init__(self, tmp: Path, store: str, name: str = "mnt", cache: str = "cache") -> None:
        self.home = tmp / "home"
        self.mnt = tmp / name
        self.cache = tmp / cache
        self.store = store
        self.mnt.mkdir(parents=True, exist_ok=True)

    def mount(self, *extra: str) -> "Mounted":
        nerdfs("mount", str(self.mnt), "--store", self.store, "--cache-dir", str(self.cache), *extra, home=self.home)
        return self

    def sync(self) -> dict:
        return json.loads(nerdfs("sync", str(self.mnt), "-o", "json", home=self.home).stdout)

    def umount(self) -> None:
        nerdfs("umount", str(self.mnt), home=self.home)

    def pid(self) -> int:
        return json.loads(nerdfs("status", str(self.mnt), "-o", "json", home=self.home).stdout).get("pid") or 0

    def cleanup(self) -> None:
        if os.path.ismount(self.mnt):
            r = nerdfs("umount", str(self.mnt), home=self.home, check=False)
            if r.returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)


@pytest.fixture
def mounts(tmp_path):
    made: list[Mounted] = []

    def make(store: str | None = None, **kw) -> Mounted:
        m = Mounted(tmp_path, store or f"file://{tmp_path / 'store'}", **kw)
        made.append(m)
        return m.mount("--refresh-interval", "2")

    yield make
    for m in made:
        m.cleanup()


@contextlib.contextmanager
def own_s3_mount(tmp_path: Path, bucket: str, *extra: str):
    """A mount on a SeaweedFS of its own, which the test may stop and start."""
    from seaweed import ACCESS_KEY, SECRET_KEY, SeaweedFS

    server = SeaweedFS(tmp_path / "seaweed").start()
    m = Mounted(tmp_path, f"s3://{bucket}/nerd")
    try:
        server.make_bucket(bucket)
        m.home.mkdir(parents=True)
        (m.home / "config.json").write_text(json.dumps({"datasets": {"s3": {
            "endpoint_url": server.endpoint, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}}}))
        m.mount(*extra)
        yield server, m
    finally:
        m.cleanup()
        server.stop()


def make_tree(root: Path, seed: int = 1) -> None:
    rng = random.Random(seed)
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "big.bin").write_bytes(rng.randbytes(3 << 20))
    (root / "a" / "text.txt").write_text("line\n" * 5000)
    (root / "a" / "b" / "empty").write_bytes(b"")
    for i in range(50):
        (root / "a" / "b" / "c" / f"small-{i}").write_bytes(rng.randbytes(rng.randrange(1, 5000)))
    (root / "link").symlink_to("a/text.txt")
    (root / "dangling").symlink_to("nowhere")
    os.link(root / "a" / "text.txt", root / "a" / "hard.txt")
    os.chmod(root / "big.bin", 0o600)
    os.chmod(root / "a" / "b", 0o750)
    os.setxattr(root / "a" / "text.txt", "user.color", b"blue")
    os.utime(root / "big.bin", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))


def rsync_diff(src: Path, dst: Path) -> list[str]:
    r = subprocess.run(["rsync", "-anciHAX", "--delete", f"{src}/", f"{dst}/"], capture_output=True, text=True,
                       check=True)
    return [line for line in r.stdout.splitlines() if line.strip()]


def test_rsync_in_verify_remount_with_empty_cache_verify(mounts, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    m = mounts()
    (m.mnt / "data").mkdir()
    subprocess.run(["rsync", "-aHAX", f"{src}/", f"{m.mnt}/data/"], check=True)
    assert rsync_diff(src, m.mnt / "data") == []
    snaps = m.sync()["snapshots"]
    assert set(snaps) == {"data"}
    m.umount()
    assert not os.path.ismount(m.mnt)
    again = mounts(cache="cache2")  # an empty cache: everything comes from the store
    assert rsync_diff(src, again.mnt / "data") == []


def test_posix_basics(mounts):
    m = mounts()
    ds = m.mnt / "ds"
    ds.mkdir()
    f = ds / "f"
    with open(f, "wb") as fh:
        fh.write(b"hello world")
    with open(f, "r+b") as fh:  # write at an offset, past the end (sparse), then read back
        fh.seek(20)
        fh.write(b"tail")
    assert f.read_bytes() == b"hello world" + b"\0" * 9 + b"tail"
    os.truncate(f, 5)
    assert f.read_bytes() == b"hello"
    with open(f, "ab") as fh:
        fh.write(b"!")
    assert f.read_bytes() == b"hello!"
    # unlink while open: the data stays readable through the descriptor
    fd = os.open(f, os.O_RDONLY)
    f.unlink()
    assert os.pread(fd, 100, 0) == b"hello!" and not f.exists()
    os.close(fd)
    # a directory cannot move into itself, however deep; next to itself it can
    (ds / "a" / "b" / "c").mkdir(parents=True)
    with pytest.raises(OSError) as e:
        os.rename(ds / "a", ds / "a" / "b" / "c" / "a")
    assert e.value.errno == errno.EINVAL
    os.rename(ds / "a" / "b" / "c", ds / "c")
    os.rename(ds / "a", ds / "c" / "a")
    assert (ds / "c" / "a" / "b").is_dir()
    m.sync()
    m.umount()
    m.mount()  # directories that come back from a snapshot know their parents too
    with pytest.raises(OSError) as e:
        os.rename(ds / "c", ds / "c" / "a" / "b" / "c")
    assert e.value.errno == errno.EINVAL
    shutil.rmtree(ds / "c")
    # rename over an existing file is atomic and replaces it
    (ds / "x").write_text("x")
    (ds / "y").write_text("y")
    os.rename(ds / "x", ds / "y")
    assert (ds / "y").read_text() == "x" and not (ds / "x").exists()
    # hard links share content and count
    os.link(ds / "y", ds / "z")
    assert os.stat(ds / "y").st_nlink == 2 and os.stat(ds / "y").st_ino == os.stat(ds / "z").st_ino
    # directories: nlink, rmdir of non-empty fails, rename across directories
    (ds / "d1" / "d2").mkdir(parents=True)
    assert os.stat(ds / "d1").st_nlink == 3
    with pytest.raises(OSError):
        os.rmdir(ds / "d1")
    os.rename(ds / "z", ds / "d1" / "d2" / "moved")
    assert (ds / "d1" / "d2" / "moved").read_text() == "x"
    os.chmod(ds / "y", 0o640)
    assert os.stat(ds / "y").st_mode & 0o777 == 0o640
    os.utime(ds / "y", ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(ds / "y").st_mtime_ns == 2_000_000_000
    os.setxattr(ds / "y", "user.k", b"v")
    assert os.getxattr(ds / "y", "user.k") == b"v" and "user.k" in os.listxattr(ds / "y")
    assert os.statvfs(m.mnt).f_bsize > 0
    big = ds / "big"
    big.write_bytes(b"a" * (3 << 20))
    assert os.stat(big).st_blocks * 512 >= 3 << 20
    # cp -a keeps modes (it must not be able to park them in an ACL we do not enforce)
    src = m.mnt.parent / "cp-src"
    src.write_text("mode")
    os.chmod(src, 0o604)
    subprocess.run(["cp", "-a", str(src), str(ds / "copied")], check=True)
    assert os.stat(ds / "copied").st_mode & 0o777 == 0o604
    # top level: only dataset directories
    with pytest.raises(OSError):
        (m.mnt / "file-at-top").write_text("no")
    with pytest.raises(OSError):
        (m.mnt / "bad name!").mkdir()


def test_random_operations_match_a_reference(mounts, tmp_path):
    rng = random.Random(20261204)
    m = mounts()
    real = m.mnt / "rand"
    real.mkdir()
    ref = tmp_path / "ref"
    ref.mkdir()
    names = [f"f{i}" for i in range(6)]
    for step in range(1500):
        op = rng.choice(["write", "write", "truncate", "append", "rename", "link", "unlink", "read"])
        a, b = rng.choice(names), rng.choice(names)
        for root in (ref, real):
            pa, pb = root / a, root / b
            try:
                if op == "write":
                    off = random.Random(step).randrange(0, 300_000)
                    data = random.Random(step + 1).randbytes(random.Random(step + 2).randrange(1, 200_000))
                    fd = os.open(pa, os.O_RDWR | os.O_CREAT, 0o644)
                    os.pwrite(fd, data, off)
                    os.close(fd)
                elif op == "truncate" and pa.exists():
                    os.truncate(pa, random.Random(step).randrange(0, 400_000))
                elif op == "append":
                    with open(pa, "ab") as fh:
                        fh.write(random.Random(step).randbytes(1000))
                elif op == "rename" and pa.exists():
                    os.rename(pa, pb)
                elif op == "link" and pa.exists() and not pb.exists():
                    os.link(pa, pb)
                elif op == "unlink" and pa.exists():
                    pa.unlink()
            except OSError as e:  # the same error on both sides is fine; compared below
                raise AssertionError(f"step {step} {op} {a} {b} on {root}: {e}") from e
        listing = sorted(p.name for p in ref.iterdir())
        assert sorted(p.name for p in real.iterdir()) == listing, step
        for name in listing:
            assert (real / name).read_bytes() == (ref / name).read_bytes(), (step, op, name)
    m.sync()


def test_streaming_writes_then_other_access_patterns(mounts, tmp_path):
    """A file written front to back is chunked as it streams in; fsync mid-way, reads while it is
    written, a write behind the stream, a truncate and a hole all keep the bytes right."""
    m = mounts()
    ds = m.mnt / "stream"
    ds.mkdir()
    rng = random.Random(5)
    ref = bytearray()
    with open(ds / "f", "wb", buffering=0) as w:
        for i in range(24):
            piece = rng.randbytes(1 << 20)
            w.write(piece)
            ref += piece
            if i == 9:
                os.fsync(w.fileno())
        with open(ds / "f", "rb") as r:  # a reader while the writer streams: sees everything written
            r.seek(5 << 20)
            assert r.read(3 << 20) == ref[5 << 20:8 << 20]
        w.write(b"tail")
        ref += b"tail"
        w.seek(100)  # behind the stream
        w.write(b"patched")
        ref[100:107] = b"patched"
    assert (ds / "f").read_bytes() == ref
    with open(ds / "g", "wb", buffering=0) as w:  # a hole past the end, then a truncate
        w.write(rng.randbytes(200_000))
        w.seek(300_000)
        w.write(b"after the hole")
        w.truncate(250_000)
    g = (ds / "g").read_bytes()
    assert len(g) == 250_000 and g[200_000:] == bytes(50_000)
    m.umount()
    again = mounts(cache="cache2")
    assert (again.mnt / "stream" / "f").read_bytes() == ref
    assert (again.mnt / "stream" / "g").read_bytes() == g


def test_real_programs_inside_the_mount(mounts, tmp_path):
    m = mounts()
    ds = m.mnt / "work"
    ds.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x", "HOME": str(tmp_path)}
    repo = ds / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    (repo / "README").write_text("hello\n")
    subprocess.run(["git", "-C", str(repo), "add", "README"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "first"], check=True, env=env)
    log = subprocess.run(["git", "-C", str(repo), "log", "--oneline"], capture_output=True, text=True, check=True,
                         env=env)
    assert "first" in log.stdout
    subprocess.run(["git", "-C", str(repo), "fsck", "--strict"], check=True, capture_output=True, env=env)
    # tar x
    src = tmp_path / "tarsrc"
    make_tree(src, seed=2)
    subprocess.run(["tar", "cf", str(tmp_path / "t.tar"), "-C", str(src), "."], check=True)
    (ds / "untar").mkdir()
    subprocess.run(["tar", "xf", str(tmp_path / "t.tar"), "-C", str(ds / "untar")], check=True)
    assert subprocess.run(["diff", "-r", "--no-dereference", str(src), str(ds / "untar")]).returncode == 0
    # SQLite
    db = ds / "db.sqlite"
    script = "create table t(x); " + " ".join(f"insert into t values({i});" for i in range(500))
    subprocess.run(["sqlite3", str(db), script], check=True)
    out = subprocess.run(["sqlite3", str(db), "select count(*), sum(x) from t; pragma integrity_check;"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["500|124750", "ok"]
    # editor-style save: write a temp file, fsync, rename over the original
    target = ds / "notes.txt"
    target.write_text("v1")
    tmp = ds / ".notes.txt.swp"
    with open(tmp, "w") as fh:
        fh.write("v2")
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, target)
    assert target.read_text() == "v2"
    m.sync()


def test_second_mount_sees_and_follows_committed_snapshots(mounts, tmp_path):
    first = mounts()
    (first.mnt / "shared").mkdir()
    (first.mnt / "shared" / "hello.txt").write_text("from the first mount")
    first.sync()
    second = mounts(name="mnt2", cache="cache2")
    assert (second.mnt / "shared" / "hello.txt").read_text() == "from the first mount"
    listed = os.listdir(second.mnt / "shared")  # the kernel now caches the old listing
    assert not (second.mnt / "shared" / "new.txt").exists()  # ... and "no such file" for a name

    # While both stay mounted, the second follows the first's commits: on
    # `nerdfs sync`, and on its own within the refresh interval.
    (first.mnt / "shared" / "hello.txt").write_text("changed by the first mount")
    (first.mnt / "shared" / "new.txt").write_text("new")
    (first.mnt / "other").mkdir()
    first.sync()
    second.sync()
    assert listed == ["hello.txt"]
    assert sorted(os.listdir(second.mnt / "shared")) == ["hello.txt", "new.txt"]
    assert (second.mnt / "shared" / "hello.txt").read_text() == "changed by the first mount"
    assert (second.mnt / "other").is_dir()

    (first.mnt / "shared" / "new.txt").unlink()
    first.sync()
    deadline = time.monotonic() + 30
    while (second.mnt / "shared" / "new.txt").exists():
        assert time.monotonic() < deadline, "the second mount did not follow within its refresh interval"
        time.sleep(0.5)

    # A dataset with unsaved changes keeps them; its commit merges with the other's.
    (second.mnt / "shared" / "mine.txt").write_text("second")
    (first.mnt / "shared" / "theirs.txt").write_text("first")
    first.sync()
    second.sync()
    assert sorted(os.listdir(second.mnt / "shared")) == ["hello.txt", "mine.txt", "theirs.txt"]


def test_kill_9_keeps_fsynced_files_and_resumes(mounts, tmp_path):
    m = mounts()
    ds = m.mnt / "crash"
    ds.mkdir()
    payload = {f"f{i}": os.urandom(300_000 + i) for i in range(5)}
    payload |= {f"small{n}": os.urandom(n) for n in (0, 100, 4096, 65536)}  # staged in memory
    for name, data in payload.items():
        with open(ds / name, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    # Still open at the crash: a small file, and one that outgrew its memory buffer.
    open_small = open(ds / "open-small", "wb")
    open_small.write(b"x" * 1000)
    open_small.flush()
    os.fsync(open_small.fileno())
    open_grown = open(ds / "open-grown", "wb")
    open_grown.write(b"y" * 1000)
    open_grown.flush()
    os.fsync(open_grown.fileno())
    open_grown.write(b"z" * 200_000)
    open_grown.flush()
    os.fsync(open_grown.fileno())
    payload |= {"open-small": b"x" * 1000, "open-grown": b"y" * 1000 + b"z" * 200_000}
    pid = m.pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    for fh in (open_small, open_grown):
        with contextlib.suppress(OSError):
            fh.close()
    time.sleep(0.5)
    subprocess.run(["fusermount3", "-u", "-z", str(m.mnt)], check=False)
    again = mounts()
    for name, data in payload.items():
        assert (again.mnt / "crash" / name).read_bytes() == data
    again.sync()
    again.umount()
    # Everything reached the store: a fresh download matches.
    out = tmp_path / "out"
    download(again.store, "crash", out, tmp_path / "dl")
    for name, data in payload.items():
        assert (out / name).read_bytes() == data
    shutil.rmtree(out)


def test_store_outage_writes_continue_and_sync_catches_up(tmp_path):
    with own_s3_mount(tmp_path, "outage") as (server, m):
        ds = m.mnt / "ds"
        ds.mkdir()
        before = os.urandom(2 << 20)
        (ds / "before").write_bytes(before)
        m.sync()
        server.stop()
        during = os.urandom(3 << 20)
        with open(ds / "during", "wb") as fh:  # writes succeed while the store is down
            fh.write(during)
            os.fsync(fh.fileno())
        deadline = time.monotonic() + 30
        while True:
            status = json.loads(nerdfs("status", str(m.mnt), "-o", "json", home=m.home).stdout)
            if status["last_error"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status["pending_chunks"] > 0 and status["last_error"], status
        assert (ds / "during").read_bytes() == during  # served from the local journal
        server.start()
        snaps = m.sync()["snapshots"]
        assert "ds" in snaps
        m.umount()
        out = tmp_path / "out"
        download(m.store, "ds", out, m.home)
        assert (out / "before").read_bytes() == before and (out / "during").read_bytes() == during


def test_snapshots_view_is_read_only_history(mounts):
    m = mounts()
    ds = m.mnt / "hist"
    ds.mkdir()
    (ds / "sub").mkdir()
    (ds / "sub" / "v.txt").write_text("version 1")
    (ds / "link").symlink_to("sub/v.txt")
    first = m.sync()["snapshots"]["hist"]
    (ds / "sub" / "v.txt").write_text("version 2")
    second = m.sync()["snapshots"]["hist"]
    assert first != second
    snaps = m.mnt / ".snapshots"
    assert ".snapshots" not in os.listdir(m.mnt)  # hidden from ls, du and rsync of the mount
    assert "hist" in os.listdir(snaps)
    assert set(os.listdir(snaps / "hist")) == {first, second}
    assert (snaps / "hist" / first / "sub" / "v.txt").read_text() == "version 1"
    assert (snaps / "hist" / second / "sub" / "v.txt").read_text() == "version 2"
    assert os.readlink(snaps / "hist" / first / "link") == "sub/v.txt"
    with pytest.raises(OSError) as e:
        (snaps / "hist" / first / "new.txt").write_text("no")
    assert e.value.errno == 30  # EROFS
    with pytest.raises(OSError):
        (snaps / "hist" / first / "sub" / "v.txt").unlink()
    assert (ds / "sub" / "v.txt").read_text() == "version 2"


def test_two_mounts_commit_to_one_dataset_and_nothing_is_lost(mounts, tmp_path):
    a = mounts()
    (a.mnt / "team").mkdir()
    (a.mnt / "team" / "common.txt").write_text("base")
    a.sync()
    b = mounts(name="mnt2", cache="cache2")
    (a.mnt / "team" / "from-a.txt").write_text("a")
    (b.mnt / "team" / "from-b.txt").write_text("b")
    snap_a = a.sync()["snapshots"]["team"]
    snap_b = b.sync()["snapshots"]["team"]  # raced with a: merged on top, since the paths differ
    assert snap_a != snap_b
    # b's working tree shows the merged result; the log holds both commits.
    assert sorted(os.listdir(b.mnt / "team")) == ["common.txt", "from-a.txt", "from-b.txt"]
    history = os.listdir(b.mnt / ".snapshots" / "team")
    assert snap_a in history and snap_b in history
    b.umount()
    a.umount()
    out = tmp_path / "out"
    download(a.store, "team", out, tmp_path / "dl")
    assert sorted(os.listdir(out)) == ["common.txt", "from-a.txt", "from-b.txt"]


def test_periodic_commit_makes_progress_visible(tmp_path):
    m = Mounted(tmp_path, f"file://{tmp_path / 'store'}")
    try:
        m.mount("--commit-interval", "1")
        (m.mnt / "auto").mkdir()
        (m.mnt / "auto" / "f").write_text("committed without sync")
        env = {**os.environ, "NERD_HOME": str(tmp_path / "other"), "NERD_STORE": m.store}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = subprocess.run([sys.executable, "-m", "nerdcli", "-o", "json", "dataset", "log", "auto"],
                               capture_output=True, text=True, env=env)
            if r.returncode == 0:
                break
            time.sleep(0.5)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["snapshots"]
    finally:
        m.cleanup()


def test_writers_wait_when_the_cache_is_full_of_unuploaded_data(tmp_path):
    import threading

    with own_s3_mount(tmp_path, "full", "--cache-size", "4MiB") as (server, m):
        (m.mnt / "ds").mkdir()
        server.stop()
        data = os.urandom(12 << 20)  # three times the cache
        done = threading.Event()
        errors: list[BaseException] = []

        def write() -> None:
            try:
                with open(m.mnt / "ds" / "big", "wb") as fh:
                    fh.write(data)
                    os.fsync(fh.fileno())
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
            done.set()

        threading.Thread(target=write, daemon=True).start()
        assert not done.wait(8), "the writer should wait for the uploader, not fail or overrun the cache"
        server.start()
        assert done.wait(120) and not errors, errors
        m.sync()
        assert (m.mnt / "ds" / "big").read_bytes() == data
        status = json.loads(nerdfs("status", str(m.mnt), "-o", "json", home=m.home).stdout)
        assert status["pending_chunks"] == 0 and status["cache_used"] <= 4 << 20


def test_sync_while_a_writer_keeps_the_uploader_busy(mounts, tmp_path):
    import threading

    m = Mounted(tmp_path, f"file://{tmp_path / 'store'}")
    m.mount("--cache-size", "16MiB")  # the writer fills the journal and waits for the uploader
    (m.mnt / "busy").mkdir()
    (m.mnt / "quiet").mkdir()
    stop = threading.Event()

    def write() -> None:  # keeps the upload journal busy until told to stop
        deadline = time.monotonic() + 90
        while not stop.is_set() and time.monotonic() < deadline:
            with open(m.mnt / "busy" / "stream", "wb") as fh:
                for _ in range(64):
                    fh.write(os.urandom(1 << 20))

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        time.sleep(1)
        (m.mnt / "quiet" / "note.txt").write_text("written before the sync")
        snaps = m.sync()  # times out (and fails) if it waits for the busy writer to stop
        assert writer.is_alive()
    finally:
        stop.set()
        writer.join()
        m.cleanup()
    assert "quiet" in snaps["snapshots"]
    again = mounts(name="mnt2", cache="cache2")
    assert (again.mnt / "quiet" / "note.txt").read_text() == "written before the sync"
