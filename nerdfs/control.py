"""The control channel of a mount: JSON lines over a Unix socket.

The mount daemon serves one socket per mount point (:func:`socket_path`); the
``nerdfs sync|status|umount`` commands talk to it with :func:`call`.

Protocol (one request per connection, every message one line of UTF-8 JSON)::

    client → server   {"op": "sync", "datasets": ["a"]}          the request: "op" plus arguments
    server → client   {"accepted": true}                         at once (a daemon that does not say this is hung)
    server → client   {"progress": {...}}                        zero or more, while the handler works
    server → client   {"ok": true, ...reply}                     the final reply, then the server closes
                  or  {"ok": false, "error": "message", "exit_code": 5}

The server side is ``await handler(request, send_progress)``: ``request`` is
the decoded dict (it always has a string ``op``), ``send_progress(dict)`` is an
async callable that sends one progress line (it never raises: if the client has
gone, progress is dropped and the handler carries on), and the handler returns
the reply dict. Raising a :class:`NerdError` sends its message and exit code;
any other exception is logged and sent as an internal error (exit code 1).
Handlers run without a time limit (``sync`` waits for uploads).

The final reply is written in a shielded scope (for up to 5 s), so a handler may
trigger the daemon's shutdown as its very last action (``umount``) and the
client still gets its answer.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from .errors import ConfigError, Conflict, IntegrityError, NerdError, NotFound, StoreError, UsageError
from .settings import nerd_home

log = logging.getLogger(__name__)

SendProgress = Callable[[dict], Awaitable[None]]
Handler = Callable[[dict, SendProgress], Awaitable[dict]]
ProgressCallback = Callable[[dict], None]

MAX_REQUEST = 1 << 20  # bytes of one request line
REQUEST_TIMEOUT = 30.0  # a client must send its request within this time
REPLY_WRITE_TIMEOUT = 5.0  # the final reply is written shielded from cancellation, for at most this long
PROGRESS_WRITE_TIMEOUT = 10.0  # a client that does not read its progress loses it
CONNECT_TIMEOUT = 5.0
ACCEPT_TIMEOUT = 15.0  # a live daemon acknowledges a request at once, however long the handler then takes
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux

_ERRORS: dict[int, type[NerdError]] = {
    UsageError.exit_code: UsageError,
    ConfigError.exit_code: ConfigError,
    NotFound.exit_code: NotFound,
    Conflict.exit_code: Conflict,
    StoreError.exit_code: StoreError,
    IntegrityError.exit_code: IntegrityError,
}


# --- where the socket lives -----------------------------------------------------------------------------------

def runtime_dir() -> Path:
    """``$XDG_RUNTIME_DIR``, else ``/run/nerdfs`` when we may write there (root), else ``<nerd home>/run``."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if not xdg:
        try:
            return _private_dir(Path("/run/nerdfs"))
        except (PermissionError, ConfigError):
            pass
    d = Path(xdg) if xdg else nerd_home() / "run"
    try:
        return _private_dir(d)
    except PermissionError:
        raise ConfigError(f"runtime directory {d}: not writable (set XDG_RUNTIME_DIR to a directory of yours)") \
            from None


def _private_dir(d: Path) -> Path:
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = d.stat()
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            os.chmod(d, 0o700)
    except PermissionError:
        raise
    except OSError as e:
        raise ConfigError(f"runtime directory {d}: {e.strerror}") from None
    if not os.access(d, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "not writable", str(d))
    return d


def socket_path(mountpoint: str | os.PathLike, canonical: bool = False) -> Path:
    """The control socket of a mount point: ``<runtime dir>/nerdfs-<16 hex of sha256(realpath)>.sock``.

    Deterministic for a mount point (symlinks and relative paths resolve to the
    same socket); the runtime directory is created with mode 0700. Resolving
    stats the mount point, which hangs on a mount whose daemon is stuck:
    ``canonical=True`` takes the path as already resolved (from mountinfo).
    """
    real = os.fspath(mountpoint) if canonical else os.path.realpath(os.fspath(mountpoint))
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:16]
    path = runtime_dir() / f"nerdfs-{digest}.sock"
    if len(os.fsencode(str(path))) > _SUN_PATH_MAX:
        raise ConfigError(f"control socket path {path} is longer than {_SUN_PATH_MAX} bytes: "
                          "set XDG_RUNTIME_DIR to a shorter directory")
    return path


# --- server ---------------------------------------------------------------------------------------------------

async def serve(path: str | os.PathLike, handler: Handler,
                task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the control socket at ``path`` until cancelled (``nursery.start`` returns the path once listening).

    A stale socket file (nothing answers on it) is replaced; if another server is
    alive on it, :class:`UsageError` is raised. The socket is mode 0600 and is
    removed when the server stops.
    """
    path = Path(path)
    lock_fd = _lock(path)
    try:
        if os.path.lexists(path):
            if await _answers(path):
                raise _already_mounted(path)
            path.unlink()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                await sock.bind(str(path))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise _already_mounted(path) from None
                raise ConfigError(f"control socket {path}: {e.strerror}") from None
            os.chmod(path, 0o600)
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        ident = os.stat(path)
        listener = trio.SocketListener(sock)
        try:
            task_status.started(path)
            await trio.serve_listeners(lambda stream: _connection(stream, handler), [listener])
        finally:
            sock.close()  # (serve_listeners closes it too; no await here: we may be cancelled)
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == (ident.st_dev, ident.st_ino):
                    path.unlink()
            except OSError:
                pass
    finally:
        os.close(lock_fd)


def _already_mounted(path: Path) -> UsageError:
    return UsageError(f"the mount point of control socket {path} is already mounted: "
                      "another nerdfs daemon serves it (nerdfs umount it first)")


def _lock(path: Path) -> int:
    """Hold an exclusive lock beside the socket for the server's lifetime (no race between two daemons)."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _already_mounted(path) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


async def _answers(path: Path) -> bool:
    s = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with s:
        try:
            with trio.fail_after(2):
                await s.connect(str(path))
            return True
        except (OSError, trio.TooSlowError):
            return False


def _encode(msg: dict) -> bytes:
    return json.dumps(msg, default=str, separators=(",", ":")).encode() + b"\n"


async def _read_request(stream: trio.SocketStream) -> bytes | None:
    buf = bytearray()
    while b"\n" not in buf:
        if len(buf) > MAX_REQUEST:
            return bytes(buf)  # refused by _decode_request
        data = await stream.receive_some(65536)
        if not data:
            return bytes(buf) if buf.strip() else None  # tolerate a missing final newline
        buf += data
    return bytes(buf[:buf.index(b"\n")])


async def _connection(stream: trio.SocketStream, handler: Handler) -> None:
    write_lock = trio.Lock()
    gone = False

    async def write(msg: dict, timeout: float) -> None:
        nonlocal gone
        if gone:
            return
        data = _encode(msg)
        async with write_lock:
            with trio.move_on_after(timeout) as scope:
                try:
                    await stream.send_all(data)
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            gone = True
            if scope.cancelled_caught:
                log.warning("control client did not read for %.0f s: dropping its messages", timeout)

    async def send_progress(progress: dict) -> None:
        await write({"progress": progress}, PROGRESS_WRITE_TIMEOUT)

    async with stream:
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                line = await _read_request(stream)
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if line is None:
            return  # a liveness probe: connected and closed
        await write({"accepted": True}, PROGRESS_WRITE_TIMEOUT)  # the client knows the daemon is not hung
        try:
            request = _decode_request(line)
            reply = await handler(request, send_progress)
            if not isinstance(reply, dict):
                raise TypeError(f"handler returned {type(reply).__name__}, not a dict")
            msg = {"ok": True, **reply}
            msg["ok"] = True
        except Exception as e:  # noqa: BLE001 - a bug in a handler must not take the daemon down
            err = _single(e)
            if isinstance(err, NerdError):
                msg = {"ok": False, "error": str(err), "exit_code": err.exit_code}
            else:
                log.exception("control request failed")
                msg = {"ok": False, "error": f"internal error: {type(err).__name__}: {err}", "exit_code": 1}
        with trio.CancelScope(shield=True):
            await write(msg, REPLY_WRITE_TIMEOUT)


def _single(e: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one, e.g. from a nursery in a handler."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e


def _decode_request(line: bytes) -> dict:
    if len(line) > MAX_REQUEST:
        raise UsageError(f"bad request: longer than {MAX_REQUEST} bytes")
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"bad request: not valid JSON ({e})") from None
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise UsageError('bad request: expected a JSON object with a string "op"')
    return request


# --- client ---------------------------------------------------------------------------------------------------

def call(mountpoint: str | os.PathLike, request: dict, timeout: float | None = None,
         on_progress: ProgressCallback | None = None) -> dict:
    """Send ``request`` to the daemon of ``mountpoint`` and return its reply (without ``ok``).

    Progress messages sent before the reply go to ``on_progress``. A failed
    request raises the :class:`NerdError` subclass of its exit code with the
    daemon's message; no daemon raises :class:`NotFound`. ``timeout`` bounds the
    whole call (None: wait as long as the daemon works).
    """
    path = socket_path(mountpoint)
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    crashed = (f"{mountpoint}: the nerdfs daemon closed the connection without answering "
               "(did it crash? see mount.log in its cache directory)")
    with _connect(path, mountpoint) as sock:
        try:
            sock.settimeout(CONNECT_TIMEOUT if timeout is None else min(timeout, CONNECT_TIMEOUT))
            try:
                sock.sendall(_encode(request))
            except BrokenPipeError:
                pass  # the daemon refused the request early: its reply says why
            buf = bytearray()
            heard = False  # anything from the daemon yet? (it acknowledges at once unless hung)
            while True:
                while b"\n" not in buf:
                    waits = [] if deadline is None else [deadline - time.monotonic()]
                    if not heard:
                        waits.append(start + ACCEPT_TIMEOUT - time.monotonic())
                    wait = min(waits) if waits else None
                    if wait is not None and wait <= 0:
                        raise socket.timeout()
                    sock.settimeout(wait)
                    data = sock.recv(1 << 16)
                    if not data:
                        raise NerdError(crashed)
                    buf += data
                end = buf.index(b"\n")
                line, buf = bytes(buf[:end]), buf[end + 1:]
                heard = True
                msg = json.loads(line) if line.strip() else {"accepted": True}
                if msg == {"accepted": True}:
                    continue
                if isinstance(msg, dict) and "progress" in msg and "ok" not in msg:
                    if on_progress is not None:
                        on_progress(msg["progress"])
                    continue
                return _reply(msg)
        except socket.timeout:
            if deadline is not None and time.monotonic() >= deadline - 0.001:
                raise NerdError(f"{mountpoint}: the nerdfs daemon did not answer within {timeout:g} s") from None
            raise NerdError(f"{mountpoint}: the nerdfs daemon does not respond (hung?): see mount.log in its cache "
                            f"directory, or force the unmount with fusermount3 -uz {mountpoint}") from None
        except ConnectionResetError:
            raise NerdError(crashed) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise NerdError(f"{mountpoint}: the nerdfs daemon sent an unreadable reply ({e})") from None


def daemon_running(mountpoint: str | os.PathLike, canonical: bool = False) -> bool:
    """Whether a daemon answers on the control socket of ``mountpoint`` (see :func:`socket_path`)."""
    try:
        _connect(socket_path(mountpoint, canonical), mountpoint).close()
        return True
    except (NerdError, OSError):
        return False


def _connect(path: Path, mountpoint: str | os.PathLike) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(str(path))
        return sock
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise NotFound(f"{mountpoint} is not a nerdfs mount (no control socket) — mount it with nerdfs mount") \
            from None
    except PermissionError:
        sock.close()
        raise UsageError(f"{mountpoint}: permission denied on its control socket {path} "
                         "(mounted by another user?)") from None
    except socket.timeout:
        sock.close()
        raise NerdError(f"{mountpoint}: the nerdfs daemon does not accept connections "
                        f"(control socket {path}); is it hung?") from None
    except BaseException:
        sock.close()
        raise


def _reply(msg: Any) -> dict:
    if not isinstance(msg, dict) or not isinstance(msg.get("ok"), bool):
        raise NerdError(f"the nerdfs daemon sent an unexpected reply: {str(msg)[:200]}")
    if msg["ok"]:
        return {k: v for k, v in msg.items() if k != "ok"}
    code = msg.get("exit_code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else 1
    err = _ERRORS.get(code, NerdError)(str(msg.get("error") or "the nerdfs daemon reported an error"))
    if type(err) is NerdError and code != NerdError.exit_code:
        err.exit_code = code
    raise err
