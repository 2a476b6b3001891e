"""The control channel of a mount (real Unix sockets, fake handlers) and the commands that drive a mount."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import trio

import nerdfs.cli as cli_module
from nerdfs import control
from nerdfs.cli import format_status, main, mounted_fs, progress_text
from nerdfs.errors import (ConfigError, Conflict, IntegrityError, NerdError, NotFound, StoreError, UsageError)
from nerdfs.mountopts import MountOptions
from nerdfs.store import S3Options

ERRORS = [UsageError, ConfigError, NotFound, Conflict, StoreError, IntegrityError]


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "run"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    return d


@pytest.fixture
def mnt(tmp_path) -> Path:
    m = tmp_path / "mnt"
    m.mkdir()
    return m


class FakeServer:
    """control.serve with a fake handler, in trio.run on a background thread."""

    def __init__(self, path: Path, handler) -> None:
        self.path, self.handler = path, handler
        self.requests: list[dict] = []
        self.error: BaseException | None = None

    async def _handle(self, request: dict, send_progress) -> dict:
        self.requests.append(request)
        return await self.handler(request, send_progress)

    def __enter__(self) -> "FakeServer":
        started = threading.Event()

        async def amain() -> None:
            self.token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as self.scope:
                async with trio.open_nursery() as n:
                    await n.start(control.serve, self.path, self._handle)
                    started.set()

        def thread() -> None:
            try:
                trio.run(amain)
            except BaseException as e:  # noqa: BLE001 - reported to the test
                self.error = e
            finally:
                started.set()

        self.thread = threading.Thread(target=thread, daemon=True)
        self.thread.start()
        assert started.wait(5)
        if self.error:
            raise self.error
        return self

    def stop_soon(self) -> None:
        """From a handler: stop serving once the reply is out (what a daemon does on umount)."""
        self.scope.cancel()

    def __exit__(self, *exc) -> None:
        try:
            trio.from_thread.run_sync(self.scope.cancel, trio_token=self.token)
        except trio.RunFinishedError:
            pass
        self.thread.join(5)
        assert not self.thread.is_alive()
        if self.error:
            raise self.error


def serving(mountpoint: Path, handler) -> FakeServer:
    return FakeServer(control.socket_path(mountpoint), handler)


async def echo(request: dict, send_progress) -> dict:
    return {"echo": request}


# --- socket location ------------------------------------------------------------------------------------------

def test_socket_path_is_deterministic_per_mount_point(tmp_path, mnt, runtime_dir):
    p = control.socket_path(mnt)
    assert p.parent == runtime_dir and p.name.startswith("nerdfs-") and p.name.endswith(".sock")
    assert len(p.name) == len("nerdfs-") + 16 + len(".sock")
    assert stat.S_IMODE(runtime_dir.stat().st_mode) == 0o700
    (tmp_path / "link").symlink_to(mnt)
    assert control.socket_path(tmp_path / "link") == p == control.socket_path(str(mnt) + "/")
    other = tmp_path / "other"
    other.mkdir()
    assert control.socket_path(other) != p


def test_runtime_dir_falls_back_to_nerd_home(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("NERD_HOME", str(tmp_path / "home"))
    d = control.runtime_dir()
    if os.access("/run", os.W_OK):
        assert d == Path("/run/nerdfs")
    else:
        assert d == tmp_path / "home" / "run"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


# --- protocol -------------------------------------------------------------------------------------------------

def test_request_reply_and_socket_mode(mnt):
    with serving(mnt, echo) as server:
        assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(server.path).st_mode)
        reply = control.call(mnt, {"op": "status", "x": [1, "ü"]})
        assert reply == {"echo": {"op": "status", "x": [1, "ü"]}}
        assert control.daemon_running(mnt)
        assert control.call(mnt, {"op": "again"})["echo"]["op"] == "again"  # one connection per request
    assert not server.path.exists()  # removed when the server stops
    assert not control.daemon_running(mnt)


def test_progress_messages_reach_on_progress(mnt):
    async def handler(request, send_progress):
        for i in range(3):
            await send_progress({"phase": "upload", "bytes_done": i, "bytes_total": 2})
        return {"snapshots": {"a": "s1"}}

    seen = []
    with serving(mnt, handler):
        reply = control.call(mnt, {"op": "sync"}, on_progress=seen.append)
        assert reply == {"snapshots": {"a": "s1"}}
        assert seen == [{"phase": "upload", "bytes_done": i, "bytes_total": 2} for i in range(3)]
        assert control.call(mnt, {"op": "sync"}) == reply  # progress without a callback is skipped


def test_handler_cannot_fake_ok(mnt):
    async def handler(request, send_progress):
        return {"ok": False, "progress": 1}

    with serving(mnt, handler):
        assert control.call(mnt, {"op": "x"}) == {"progress": 1}


@pytest.mark.parametrize("cls", ERRORS)
def test_errors_round_trip_with_their_exit_code(mnt, cls):
    async def handler(request, send_progress):
        raise cls(f"dataset a: {cls.__name__}")

    with serving(mnt, handler):
        with pytest.raises(cls) as info:
            control.call(mnt, {"op": "sync"})
    assert type(info.value) is cls and info.value.exit_code == cls.exit_code
    assert str(info.value) == f"dataset a: {cls.__name__}"


def test_unknown_exit_code_and_internal_errors(mnt):
    async def handler(request, send_progress):
        if request["op"] == "odd":
            e = NerdError("odd one")
            e.exit_code = 9
            raise e
        if request["op"] == "bug":
            return {"x": 1 / 0}
        return {"alive": True}

    with serving(mnt, handler):
        with pytest.raises(NerdError) as info:
            control.call(mnt, {"op": "odd"})
        assert type(info.value) is NerdError and info.value.exit_code == 9 and str(info.value) == "odd one"
        with pytest.raises(NerdError) as info:
            control.call(mnt, {"op": "bug"})
        assert info.value.exit_code == 1 and str(info.value).startswith("internal error: ZeroDivisionError")
        assert control.call(mnt, {"op": "still alive"})  # a failing handler does not stop the server


def test_bad_requests_are_usage_errors(mnt):
    with serving(mnt, echo) as server:
        for raw in (b"not json\n", b"[1, 2]\n", b'{"op": 3}\n'):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(server.path))
                s.sendall(raw)
                f = s.makefile("rb")
                assert json.loads(f.readline()) == {"accepted": True}
                reply = json.loads(f.readline())
                assert f.readline() == b""  # and the server closes
            assert reply["ok"] is False and reply["exit_code"] == 2 and "bad request" in reply["error"]
        with pytest.raises(UsageError, match="bad request: longer than"):
            control.call(mnt, {"op": "x" * (2 << 20)})


def test_missing_socket_is_not_found(mnt):
    with pytest.raises(NotFound) as info:
        control.call(mnt, {"op": "status"})
    assert str(info.value) == f"{mnt} is not a nerdfs mount (no control socket) — mount it with nerdfs mount"
    assert not control.daemon_running(mnt)


def test_stale_socket_file_is_replaced(mnt):
    path = control.socket_path(mnt)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nothing listens: what a killed daemon leaves behind
    assert path.exists()
    with pytest.raises(NotFound):
        control.call(mnt, {"op": "status"})  # ECONNREFUSED counts as missing
    with serving(mnt, echo):
        assert control.call(mnt, {"op": "status"})["echo"] == {"op": "status"}


def test_second_server_on_the_same_path_is_refused(mnt):
    path = control.socket_path(mnt)

    async def second() -> None:
        await control.serve(path, echo)

    with serving(mnt, echo):
        with pytest.raises(UsageError, match="already mounted"):
            trio.run(second)
        assert control.call(mnt, {"op": "status"})  # the first one still serves


def test_a_live_foreign_listener_is_not_removed(mnt):
    path = control.socket_path(mnt)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        s.listen(1)

        async def start() -> None:
            await control.serve(path, echo)

        with pytest.raises(UsageError, match="already mounted"):
            trio.run(start)
        assert path.exists()


def test_client_timeout_and_a_daemon_that_hangs_up(mnt):
    async def slow(request, send_progress):
        await trio.sleep(5)
        return {}

    with serving(mnt, slow):
        t = time.monotonic()
        with pytest.raises(NerdError, match="did not answer within 0.2 s"):
            control.call(mnt, {"op": "sync"}, timeout=0.2)
        assert time.monotonic() - t < 2

    path = control.socket_path(mnt)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(1)

        def hang_up() -> None:
            conn, _ = listener.accept()
            conn.recv(100)
            conn.close()

        threading.Thread(target=hang_up, daemon=True).start()
        with pytest.raises(NerdError, match="closed the connection without answering"):
            control.call(mnt, {"op": "sync"}, timeout=5)


def test_progress_to_a_vanished_client_does_not_disturb_the_handler(mnt):
    finished = threading.Event()

    async def handler(request, send_progress):
        for i in range(200):
            await send_progress({"i": i, "pad": "x" * 1000})
        finished.set()
        return {"done": True}

    with serving(mnt, handler) as server:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(server.path))
            s.sendall(b'{"op": "sync"}\n')
        assert finished.wait(5)
        assert control.call(mnt, {"op": "x"}) == {"done": True}


def test_mount_options_signal_readiness_once(tmp_path):
    r, w = os.pipe()
    opts = MountOptions(mountpoint=tmp_path, store="file:///x", s3=S3Options(), cache_dir=tmp_path,
                        cache_size=1, ready_fd=w)
    opts.signal_ready()
    opts.signal_error(3, "too late\nignored")
    assert opts.signalled and opts.ready_fd is None
    assert os.read(r, 100) == b"ok\n" and os.read(r, 100) == b""  # written once, then closed
    r, w = os.pipe()
    opts = MountOptions(mountpoint=tmp_path, store="file:///x", s3=S3Options(), cache_dir=tmp_path,
                        cache_size=1, ready_fd=w)
    opts.signal_error(6, "bucket\ngone")
    assert os.read(r, 100) == b"error 6 bucket gone\n"


# --- the commands, in-process against a fake daemon -----------------------------------------------------------

def nerdfs(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return info.value.code, out, err


def assert_one_line_error(code: int, err: str, expected: int, *needles: str) -> None:
    assert code == expected, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nerdfs: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_sync_command(mnt, capsys):
    async def handler(request, send_progress):
        await send_progress({"phase": "upload", "bytes_done": 5, "bytes_total": 10})
        if request["datasets"] == ["busy"]:
            raise Conflict("dataset busy: changed concurrently, retry")
        return {"snapshots": {"a": "s1", "b": "s2"}}

    with serving(mnt, handler) as server:
        code, out, err = nerdfs(capsys, "sync", str(mnt), "-o", "json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["snapshots"] == {"a": "s1", "b": "s2"} and doc["mountpoint"] == str(mnt)
        assert server.requests[-1] == {"op": "sync", "datasets": []}

        code, out, err = nerdfs(capsys, "sync", str(mnt), "a", "b")
        assert code == 0 and out == "a  s1\nb  s2\n" and err == ""  # no progress when stderr is no TTY
        assert server.requests[-1] == {"op": "sync", "datasets": ["a", "b"]}

        code, out, err = nerdfs(capsys, "sync", str(mnt), "busy", "--output", "json")
        assert_one_line_error(code, err, 5, "dataset busy")
        assert json.loads(out)["error"]["exit_code"] == 5

        n = len(server.requests)
        code, out, err = nerdfs(capsys, "sync", str(mnt), "../x")
        assert_one_line_error(code, err, 2, "invalid dataset name")
        assert len(server.requests) == n


def test_status_command(mnt, capsys):
    status = {"datasets": {"a": {"snapshot": "s1", "dirty_bytes": 2048}}, "dirty_bytes": 2048,
              "pending_chunks": 3, "pending_bytes": 3 << 20, "upload_rate": 1 << 20, "cache_used": 5 << 20,
              "cache_limit": 10 << 30, "last_error": None, "extra": {"k": 1}}

    async def handler(request, send_progress):
        return status

    with serving(mnt, handler) as server:
        code, out, err = nerdfs(capsys, "status", str(mnt), "-o", "json")
        assert code == 0 and json.loads(out) == {"mountpoint": str(mnt), **status}
        assert server.requests == [{"op": "status"}]
        code, out, err = nerdfs(capsys, "status", str(mnt))
        assert code == 0
        assert "3 chunks, 3.0 MiB at 1.0 MiB/s" in out and "5.0 MiB of 10.0 GiB" in out
        assert "last error:" in out and "none" in out and "extra:" in out and "snapshot s1" in out


def test_umount_command(mnt, capsys):
    async def handler(request, send_progress):
        await send_progress({"phase": "upload", "bytes_done": 1})
        server.stop_soon()  # the daemon goes away after its reply
        return {"snapshots": {"a": "s9"}} if request["wait"] else {"pending_chunks": 4}

    with serving(mnt, handler) as server:
        code, out, err = nerdfs(capsys, "umount", str(mnt))
        assert code == 0 and out == f"a  s9\nunmounted {mnt}\n", err
        assert server.requests == [{"op": "umount", "wait": True}]
        assert not control.daemon_running(mnt)  # umount waited for the server to go
        server.thread.join(5)
        assert not server.thread.is_alive()
    with serving(mnt, handler) as server:
        code, out, err = nerdfs(capsys, "umount", str(mnt), "--no-wait", "-o", "json")
        assert code == 0, err
        assert json.loads(out) == {"mountpoint": str(mnt), "pending_chunks": 4, "forced": False, "unmounted": True}
        assert server.requests == [{"op": "umount", "wait": False}]


def test_umount_waits_for_the_daemon_to_go(mnt, capsys, monkeypatch):
    monkeypatch.setattr(cli_module, "UMOUNT_TIMEOUT", 0.3)

    async def handler(request, send_progress):
        return {}  # ...but keeps serving

    with serving(mnt, handler):
        code, out, err = nerdfs(capsys, "umount", str(mnt))
    assert_one_line_error(code, err, 1, "still mounted 0.3 s after")


@pytest.mark.parametrize("command", ["sync", "status", "umount"])
def test_commands_without_a_mount_are_not_found(mnt, capsys, command):
    code, out, err = nerdfs(capsys, command, str(mnt))
    assert_one_line_error(code, err, 4, f"{mnt} is not a nerdfs mount")


def test_mount_refuses_bad_mount_points(tmp_path, mnt, capsys, monkeypatch):
    monkeypatch.setenv("NERD_HOME", str(tmp_path / "home"))
    (mnt / "file").write_text("x")
    code, out, err = nerdfs(capsys, "mount", str(mnt))
    assert_one_line_error(code, err, 2, "is not empty")
    code, out, err = nerdfs(capsys, "mount", str(tmp_path / "nope"))
    assert_one_line_error(code, err, 2, "does not exist")
    code, out, err = nerdfs(capsys, "mount", str(mnt / "file"))
    assert_one_line_error(code, err, 2, "not a directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = nerdfs(capsys, "mount", str(empty), "--cache-size", "lots")
    assert_one_line_error(code, err, 2, "--cache-size")
    with serving(empty, echo):
        code, out, err = nerdfs(capsys, "mount", str(empty))
        assert_one_line_error(code, err, 2, "already mounted by nerdfs")


def test_mounted_fs_reads_mountinfo(mnt):
    assert mounted_fs("/proc") == "proc"
    assert mounted_fs(mnt) is None


def test_text_helpers():
    assert progress_text({"phase": "upload", "dataset": "a", "bytes_done": 512, "bytes_total": 1024,
                          "chunks_done": 1, "chunks_total": 2, "rate": 2048}) == \
        "upload  a  512 B of 1.0 KiB (50%)  1/2 chunks  2.0 KiB/s"
    assert format_status(Path("/m"), {"datasets": ["a", "b"]}).splitlines() == \
        ["mount:     /m", "datasets:  2", "  a:", "  b:"]


# --- the daemon: `nerdfs mount` in the background, with a fake filesystem -------------------------------------

FAKE_FS = '''
import os, sys
import trio
import nerdfs.cli as cli_module
from nerdfs import control
from nerdfs.errors import StoreError, UsageError

def run(options):
    mode = os.environ["FAKE_FS_MODE"]
    if mode == "fail":
        raise StoreError("store s3://b/x: no such bucket")
    if mode == "crash":
        print("boom: segfault in the fake", file=sys.stderr, flush=True)
        os._exit(9)

    async def main():
        done = trio.Event()

        async def handler(request, send_progress):
            if request["op"] == "status":
                return {"store": options.store, "cache_limit": options.cache_size, "read_only": options.read_only,
                        "pid": os.getpid(), "commit_interval": options.commit_interval,
                        "cache_dir": str(options.cache_dir), "foreground": options.foreground}
            if request["op"] == "umount":
                await send_progress({"phase": "upload", "bytes_done": 1, "bytes_total": 2})
                done.set()  # shut down as the last action: the reply still goes out
                return {"snapshots": {"a": "s1"}}
            raise UsageError("unknown op " + request["op"])

        async with trio.open_nursery() as nursery:
            await nursery.start(control.serve, control.socket_path(options.mountpoint), handler)
            options.signal_ready()
            await done.wait()
            nursery.cancel_scope.cancel()

    trio.run(main)
'''


def nerdfs_process(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nerdfs", *args], env=env, capture_output=True, text=True,
                          timeout=30)


@pytest.fixture
def daemon_env(tmp_path, runtime_dir) -> dict:
    (tmp_path / "fakefs").mkdir()
    (tmp_path / "fakefs" / "fake_fs.py").write_text(textwrap.dedent(FAKE_FS))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "NERD_"))}
    env.update(NERD_HOME=str(tmp_path / "home"), XDG_RUNTIME_DIR=str(runtime_dir),
               PYTHONPATH=str(tmp_path / "fakefs"), NERDFS_MOUNT_ENTRY="fake_fs:run", FAKE_FS_MODE="ok")
    return env


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"  # a zombie nobody reaps is gone
    except FileNotFoundError:
        return True


def test_mount_daemonises_and_umount_stops_it(tmp_path, mnt, daemon_env):
    r = nerdfs_process(["mount", str(mnt), "--cache-size", "1GiB", "--commit-interval", "5", "-o", "json"],
                       daemon_env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    pid = doc["pid"]
    try:
        assert doc["mountpoint"] == str(mnt) and doc["store"] == f"file://{tmp_path / 'home' / 'store'}"
        assert doc["log"] == str(tmp_path / "home" / "cache" / "mount.log")
        status = json.loads(nerdfs_process(["status", str(mnt), "-o", "json"], daemon_env).stdout)
        assert status["pid"] == pid and status["cache_limit"] == 1 << 30 and status["commit_interval"] == 5.0
        assert status["foreground"] is True and status["read_only"] is False
        assert status["cache_dir"] == str(tmp_path / "home" / "cache")

        r = nerdfs_process(["mount", str(mnt)], daemon_env)
        assert r.returncode == 2 and "already mounted by nerdfs" in r.stderr

        r = nerdfs_process(["umount", str(mnt)], daemon_env)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"a  s1\nunmounted {mnt}\n"
        deadline = time.monotonic() + 5
        while not gone(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gone(pid)
        assert not control.socket_path(mnt).exists()
    finally:
        if not gone(pid):
            os.kill(pid, 9)


@pytest.mark.parametrize("mode, code, needle", [
    ("fail", 6, "store s3://b/x: no such bucket"),
    ("crash", 9, "boom: segfault in the fake"),
])
def test_mount_reports_a_daemon_that_fails(tmp_path, mnt, daemon_env, mode, code, needle):
    r = nerdfs_process(["mount", str(mnt)], {**daemon_env, "FAKE_FS_MODE": mode})
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nerdfs: error: ") and needle in lines[0], r.stderr
    assert r.stdout == ""


def test_mount_without_a_filesystem_says_so(mnt, daemon_env):
    r = nerdfs_process(["mount", str(mnt)], {**daemon_env, "NERDFS_MOUNT_ENTRY": "no_such_module:run"})
    assert r.returncode == 3 and "cannot be loaded" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_python_dash_m_nerdfs_refuses_a_non_empty_dir(mnt, daemon_env):
    (mnt / "x").mkdir()
    r = nerdfs_process(["mount", str(mnt)], daemon_env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"nerdfs: error: mount point {mnt} is not empty: nerdfs mounts only on an empty directory\n"


# --- a real FUSE mount whose daemon died ----------------------------------------------------------------------

DEAD_FS = '''
import sys, os, stat
import pyfuse3, trio

class Ops(pyfuse3.Operations):
    async def getattr(self, inode, ctx=None):
        a = pyfuse3.EntryAttributes()
        a.st_ino, a.st_mode, a.st_nlink = inode, stat.S_IFDIR | 0o755, 2
        return a

pyfuse3.init(Ops(), sys.argv[1], {"fsname=deadfs", "subtype=deadfs"})
print("ready", flush=True)
trio.run(pyfuse3.main)
'''


@pytest.mark.skipif(not os.access("/dev/fuse", os.R_OK | os.W_OK), reason="needs /dev/fuse")
def test_umount_cleans_up_after_a_dead_daemon(tmp_path, mnt, capsys):
    pytest.importorskip("pyfuse3")
    script = tmp_path / "deadfs.py"
    script.write_text(DEAD_FS)
    fs = subprocess.Popen([sys.executable, str(script), str(mnt)], stdout=subprocess.PIPE, text=True)
    try:
        assert fs.stdout.readline() == "ready\n"
        assert mounted_fs(mnt) == "fuse.deadfs"
        fs.kill()
        fs.wait(5)
        assert mounted_fs(mnt) == "fuse.deadfs"  # still there, answering ENOTCONN

        code, out, err = nerdfs(capsys, "mount", str(mnt))
        assert_one_line_error(code, err, 2, "already a mount point (fuse.deadfs)", f"nerdfs umount {mnt}")

        code, out, err = nerdfs(capsys, "umount", str(mnt), "-o", "json")
        assert code == 0, err
        assert json.loads(out) == {"mountpoint": str(mnt), "forced": True, "unmounted": True}
        assert "fusermount3 -u" in err and mounted_fs(mnt) is None
    finally:
        fs.kill()
        if mounted_fs(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)])


def test_help_has_examples_and_exit_codes(capsys):
    code, out, err = nerdfs(capsys, "--help")
    assert code == 0 and "Exit codes" in out and "130" in out
    for cmd in ("mount", "sync", "status", "umount", "check"):
        code, out, err = nerdfs(capsys, cmd, "--help")
        assert code == 0 and "Examples" in out and "--output" in out, cmd
    assert "--ready-fd" not in nerdfs(capsys, "mount", "--help")[1]


def test_errors_from_nurseries_and_trio_timeouts_in_handlers(mnt):
    async def handler(request, send_progress):
        if request["op"] == "group":
            async with trio.open_nursery() as n:
                async def fail():
                    raise StoreError("bucket gone")
                n.start_soon(fail)
        with trio.fail_after(0.01):
            await trio.sleep(1)
        return {}

    with serving(mnt, handler):
        with pytest.raises(StoreError, match="bucket gone"):
            control.call(mnt, {"op": "group"})
        with pytest.raises(NerdError, match="internal error: TooSlowError"):
            control.call(mnt, {"op": "slow"})


def test_a_hung_daemon_is_told_apart_from_a_slow_handler(mnt, monkeypatch):
    monkeypatch.setattr(control, "ACCEPT_TIMEOUT", 0.3)

    async def slow(request, send_progress):
        await trio.sleep(0.6)  # longer than ACCEPT_TIMEOUT, without progress: fine, it acknowledged
        return {"done": True}

    with serving(mnt, slow):
        assert control.call(mnt, {"op": "sync"}) == {"done": True}

    path = control.socket_path(mnt)
    with socket.socket(socket.AF_UNIX) as listener:  # a daemon whose event loop is stuck: the kernel accepts
        listener.bind(str(path))
        listener.listen(1)
        t = time.monotonic()
        with pytest.raises(NerdError, match=r"does not respond \(hung\?\).*fusermount3 -uz"):
            control.call(mnt, {"op": "umount"})
        assert time.monotonic() - t < 2
