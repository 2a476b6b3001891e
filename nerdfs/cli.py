"""The ``nerdfs`` command: mount a store, drive the mount, maintain the store.

Exit codes as for ``nerd``: 0 ok, 1 internal error, 2 usage, 3 configuration,
4 not found (e.g. no mount there), 5 conflict, 6 store error, 7 integrity
problems found, 130 interrupted. Data goes to stdout (text, or one JSON
document with ``--output json``); errors are one line on stderr. Set
``NERD_DEBUG=1`` for tracebacks.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from . import __version__, console
from .console import human_bytes
from .checker import Checker
from .errors import EXIT_CODES, ConfigError, IntegrityError, NerdError, NotFound, UsageError
from .repo import Repository
from .settings import load_datasets, nerd_home, parse_size

EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())
MOUNT_READY_TIMEOUT = 300.0  # seconds `nerdfs mount` waits for its daemon to be mounted
UMOUNT_TIMEOUT = 60.0  # seconds `nerdfs umount` waits for the mount to go once the daemon has answered
STATUS_TIMEOUT = 30.0

output_option = click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text",
                             help="Output format: text, or one JSON document on stdout.")
config_option = click.option("--config-file", type=click.Path(dir_okay=False), envvar="NERD_CONFIG_FILE",
                             help="Config file (default ~/.nerd/config.json).")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EPILOG)
@click.version_option(__version__, prog_name="nerdfs")
def cli() -> None:
    """nerdfs: the deduplicating storage engine behind nerd, and its FUSE mount.

    \b
    Examples:
      nerdfs mount ~/data                  # datasets appear as ~/data/<name>/
      nerdfs sync ~/data                   # snapshot every changed dataset, wait for uploads
      nerdfs status ~/data -o json
      nerdfs umount ~/data
      nerdfs check --read-data
    """


@cli.command()
@click.option("--store", help="Store URL (default: datasets.store in the config, or NERD_STORE).")
@config_option
@click.option("--read-data", is_flag=True, help="Also download and verify every chunk (slow: reads everything).")
@output_option
def check(store: str | None, config_file: str | None, read_data: bool, output: str) -> None:
    """Verify that every snapshot of every dataset is complete and intact.

    \b
    Examples:
      nerdfs check
      nerdfs check --store s3://bucket/nerd --read-data -o json
    """
    ds = load_datasets(config_file or nerd_home() / "config.json")
    with Repository.open(store or ds.store_url(), s3=ds.s3, cache_dir=ds.cache_path(),
                         cache_size=ds.cache_size, create=False) as repo:
        report = Checker(repo, threads=ds.threads).check(read_data=read_data)
    doc = {"store": repo.url, "ok": report.ok, "datasets": report.datasets, "snapshots": report.snapshots,
           "trees": report.trees, "chunks": report.chunks, "bytes": report.bytes, "problems": report.problems}
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
    else:
        for p in report.problems:
            click.echo(f"problem: {p}")
        click.echo(f"{repo.url}: {report.datasets} datasets, {report.snapshots} snapshots, {report.trees} trees, "
                   f"{report.chunks} chunks ({report.bytes} bytes): "
                   + ("ok" if report.ok else f"{len(report.problems)} problems"))
    if not report.ok:
        sys.exit(IntegrityError.exit_code)


# --- the mount ------------------------------------------------------------------------------------------------

@cli.command()
@click.argument("mountpoint", type=click.Path(path_type=Path, readable=False))
@click.option("--store", help="Store URL (default: datasets.store in the config, or NERD_STORE).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Local cache and staging directory (default: datasets.cache_dir, ~/.nerd/cache).")
@click.option("--cache-size", metavar="SIZE", help="Cache size limit, e.g. 50GiB (default: datasets.cache_size).")
@click.option("--read-only", is_flag=True, help="Mount read-only: browse datasets and snapshots, change nothing.")
@click.option("--commit-interval", type=click.FloatRange(min=1.0), default=60.0, show_default=True,
              metavar="SECONDS", help="Snapshot changed datasets automatically this often.")
@click.option("--refresh-interval", type=click.FloatRange(min=1.0), default=10.0, show_default=True,
              metavar="SECONDS", help="Look for other clients' snapshots this often (clean datasets follow them).")
@click.option("--foreground", "-f", is_flag=True, help="Stay in the foreground until unmounted (logs on stderr).")
@config_option
@click.option("--ready-fd", type=int, hidden=True)  # set by the daemonising parent: see MountOptions
@output_option
def mount(mountpoint: Path, store: str | None, cache_dir: Path | None, cache_size: str | None, read_only: bool,
          commit_interval: float, refresh_interval: float, foreground: bool, config_file: str | None,
          ready_fd: int | None, output: str) -> None:
    """Mount the store's datasets on MOUNTPOINT, an existing empty directory.

    MOUNTPOINT/<dataset>/ are writable working trees (mkdir creates a dataset),
    MOUNTPOINT/.snapshots/<dataset>/<id>/ their read-only past versions.
    Changes become snapshots on `nerdfs sync`, periodically, and on umount.
    Without --foreground the filesystem runs as a daemon logging to
    <cache dir>/mount.log; the command returns once it is mounted.

    \b
    Examples:
      nerdfs mount ~/data
      nerdfs mount ~/data --store s3://bucket/nerd --cache-size 50GiB
      nerdfs mount /mnt/ro --read-only -o json
      nerdfs mount ~/data --foreground      # Ctrl-C or `nerdfs umount` to stop

    Exit codes: 0 mounted, 2 bad mount point or option (already mounted, not
    empty), 3 configuration, 6 store error; the daemon's own code if it fails.
    """
    if foreground and ready_fd is not None:
        try:
            options, cfg_path = _mount_options(mountpoint, store, cache_dir, cache_size, read_only,
                                               commit_interval, foreground, config_file, ready_fd,
                                               refresh_interval=refresh_interval)
        except NerdError as e:  # tell the waiting parent (run's own failures are signalled by _run_foreground)
            _signal_fd(ready_fd, f"error {e.exit_code} {' '.join(str(e).split())}")
            raise
    else:
        options, cfg_path = _mount_options(mountpoint, store, cache_dir, cache_size, read_only, commit_interval,
                                           foreground, config_file, None, refresh_interval=refresh_interval)
    if foreground:
        _run_foreground(options, output)
    else:
        _daemonise(options, cfg_path, output)


def _mount_options(mountpoint: Path, store: str | None, cache_dir: Path | None, cache_size: str | None,
                   read_only: bool, commit_interval: float, foreground: bool, config_file: str | None,
                   ready_fd: int | None, *, refresh_interval: float = 10.0) -> tuple[Any, Path]:
    from .mountopts import MountOptions

    cfg_path = Path(os.path.abspath(os.path.expanduser(config_file))) if config_file else nerd_home() / "config.json"
    ds = load_datasets(cfg_path)
    try:
        size = parse_size(cache_size, "--cache-size") if cache_size is not None else ds.cache_size
    except ValueError as e:
        raise UsageError(str(e)) from None
    mnt = check_mountpoint(mountpoint)
    options = MountOptions(
        mountpoint=mnt, store=store or ds.store_url(), s3=ds.s3,
        cache_dir=Path(os.path.abspath(os.path.expanduser(cache_dir))) if cache_dir else ds.cache_path().absolute(),
        cache_size=size, read_only=read_only, commit_interval=commit_interval, refresh_interval=refresh_interval,
        foreground=foreground,
        threads=ds.threads, ready_fd=ready_fd)
    return options, cfg_path


def _signal_fd(fd: int, line: str) -> None:
    try:
        os.write(fd, (line + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def check_mountpoint(mountpoint: Path) -> Path:
    """The absolute mount point, or a UsageError: it must be an existing, empty, unmounted directory."""
    from . import control

    mnt = Path(os.path.realpath(mountpoint))
    if control.daemon_running(mnt):
        raise UsageError(f"{mnt} is already mounted by nerdfs (nerdfs umount {mnt} first)")
    fstype = mounted_fs(mnt)
    if fstype is not None:
        hint = f"; if it is a crashed nerdfs mount, nerdfs umount {mnt} cleans it up" \
            if fstype.startswith("fuse") else ""
        raise UsageError(f"{mnt} is already a mount point ({fstype}){hint}")
    if not mnt.exists():
        raise UsageError(f"mount point {mnt} does not exist: create it with mkdir -p {mnt}")
    if not mnt.is_dir():
        raise UsageError(f"mount point {mnt} is not a directory")
    try:
        with os.scandir(mnt) as it:
            nonempty = next(it, None) is not None
    except OSError as e:
        raise UsageError(f"mount point {mnt}: cannot list it ({e.strerror})") from None
    if nonempty:
        raise UsageError(f"mount point {mnt} is not empty: nerdfs mounts only on an empty directory")
    return mnt


def _daemonise(options: Any, config_file: Path, output: str) -> None:
    """Start `nerdfs mount --foreground` as a daemon and wait until it says it is mounted."""
    try:
        options.cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cache directory {options.cache_dir}: {e.strerror}") from None
    log_path = options.cache_dir / "mount.log"
    args = [sys.executable, "-m", "nerdfs", "mount", str(options.mountpoint), "--foreground",
            "--store", options.store, "--cache-dir", str(options.cache_dir), "--cache-size", str(options.cache_size),
            "--commit-interval", repr(options.commit_interval),
            "--refresh-interval", repr(options.refresh_interval), "--config-file", str(config_file)]
    if options.read_only:
        args.append("--read-only")
    env = dict(os.environ)
    if "NERD_HOME" in env:
        env["NERD_HOME"] = os.path.abspath(env["NERD_HOME"])
    package_root = str(Path(__file__).resolve().parent.parent)  # the daemon runs in /: find this nerdfs there
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.setdefault("MALLOC_ARENA_MAX", "2")  # many worker threads, one arena each, would double the RSS
    r, w = os.pipe()
    try:
        with open(log_path, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} nerdfs mount {options.mountpoint} "
                      f"(store {options.store})\n".encode())
            log.flush()
            log_start = log.tell()
            child = subprocess.Popen([*args, "--ready-fd", str(w)], pass_fds=(w,), start_new_session=True,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd="/",
                                     env=env)
    finally:
        os.close(w)
    try:
        line = _read_ready_line(r, MOUNT_READY_TIMEOUT)
    finally:
        os.close(r)
    if line is None:
        raise NerdError(f"the nerdfs daemon (pid {child.pid}) did not finish mounting {options.mountpoint} within "
                        f"{MOUNT_READY_TIMEOUT:g} s; see {log_path}")
    if line == "ok":
        doc = {"mountpoint": str(options.mountpoint), "store": options.store, "pid": child.pid, "log": str(log_path)}
        _emit(output, doc, f"mounted {options.mountpoint}")
        return
    m = re.match(r"error (\d+) (.*)", line)
    if m:
        code, message = int(m.group(1)), m.group(2)
    else:  # EOF: the daemon died without a word
        try:
            rc = child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        code = rc if rc and rc > 0 else 1
        message = _last_error_line(log_path, log_start) or (
            f"the nerdfs daemon exited with status {rc} before mounting" if rc is not None else
            "the nerdfs daemon closed its ready pipe before mounting")
        message = f"{message} (see {log_path})"
    err = NerdError(message)
    err.exit_code = code
    raise err


def _read_ready_line(fd: int, timeout: float) -> str | None:
    """The daemon's one line: "ok", "error <code> <message>", "" on EOF, None on timeout."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        data = os.read(fd, 4096)
        if not data:
            break
        buf += data
    return buf.split(b"\n", 1)[0].decode(errors="replace").strip()


def _last_error_line(log_path: Path, start: int) -> str:
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for ln in reversed(lines):
        if ln.startswith("nerdfs: error: "):
            return ln.removeprefix("nerdfs: error: ")
    return lines[-1] if lines else ""


def _filesystem_entry() -> Callable[[Any], None]:
    """``nerdfs.fuse.mount.run``, imported only now (``nerdfs check`` works without FUSE).

    ``NERDFS_MOUNT_ENTRY=module:function`` replaces it (tests of the daemon plumbing).
    """
    import importlib

    spec = os.environ.get("NERDFS_MOUNT_ENTRY") or "nerdfs.fuse.mount:run"
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"the nerdfs filesystem cannot be loaded ({e}): install fuse3 and pyfuse3") from None


def _run_foreground(options: Any, output: str) -> None:
    interactive = options.ready_fd is None
    try:
        run = _filesystem_entry()
        if interactive and output == "text":
            click.echo(f"nerdfs: mounting {options.mountpoint} in the foreground "
                       f"(stop with nerdfs umount {options.mountpoint} or Ctrl-C)", err=True)
        run(options)
    except NerdError as e:
        options.signal_error(e.exit_code, str(e))
        raise
    except (KeyboardInterrupt, click.Abort):
        options.signal_error(130, "interrupted")
        raise
    except Exception as e:
        options.signal_error(1, f"internal error: {type(e).__name__}: {e}")
        raise
    if not options.signalled:
        options.signal_error(1, "the filesystem stopped before it was mounted")
        raise NerdError(f"the filesystem stopped before {options.mountpoint} was mounted")
    doc = {"mountpoint": str(options.mountpoint), "store": options.store, "pid": os.getpid(), "unmounted": True}
    _emit(output, doc, f"unmounted {options.mountpoint}")


# --- commands that drive a mount ------------------------------------------------------------------------------

@cli.command()
@click.argument("mountpoint", type=click.Path(path_type=Path, readable=False))
@click.argument("datasets", nargs=-1)
@output_option
def sync(mountpoint: Path, datasets: tuple[str, ...], output: str) -> None:
    """Snapshot the changed DATASETS (default: all) of a mount and wait until the store has them.

    Returns once everything written before it is durable in the store and
    visible to other clients; prints each dataset's snapshot. Then the mount
    shows what other clients committed (clean datasets move to their new
    head; a mount also does this by itself every --refresh-interval).

    \b
    Examples:
      nerdfs sync ~/data
      nerdfs sync ~/data genomes scratch -o json

    Exit codes: 0 synced, 2 bad dataset name, 4 no mount at MOUNTPOINT,
    5 conflict with a concurrent change, 6 store error.
    """
    from . import control
    from .datasets import check_dataset_name

    for name in datasets:
        check_dataset_name(name)
    with _progress_line(output) as progress:
        reply = control.call(mountpoint, {"op": "sync", "datasets": list(datasets)}, on_progress=progress)
    snapshots = reply.get("snapshots") or {}
    text = "\n".join(f"{name}  {snap if snap is not None else '-'}" for name, snap in snapshots.items())
    _emit(output, {"mountpoint": str(mountpoint), **reply, "snapshots": snapshots}, text or None)
    if not snapshots and output == "text":
        click.echo(f"nerdfs: no datasets to sync in {mountpoint}", err=True)


@cli.command()
@click.argument("mountpoint", type=click.Path(path_type=Path, readable=False))
@output_option
def status(mountpoint: Path, output: str) -> None:
    """Show a mount's datasets, unsaved and pending-upload data, cache use and last error.

    \b
    Examples:
      nerdfs status ~/data
      nerdfs status ~/data -o json

    Exit codes: 0 ok, 4 no mount at MOUNTPOINT.
    """
    from . import control

    reply = control.call(mountpoint, {"op": "status"}, timeout=STATUS_TIMEOUT)
    _emit(output, {"mountpoint": str(mountpoint), **reply}, format_status(mountpoint, reply))


@cli.command()
@click.argument("mountpoint", type=click.Path(path_type=Path, readable=False))
@click.option("--no-wait", is_flag=True,
              help="Do not wait for pending uploads: they resume at the next mount of the same cache.")
@output_option
def umount(mountpoint: Path, no_wait: bool, output: str) -> None:
    """Snapshot changed datasets, wait for uploads (with progress) and unmount.

    If the daemon is gone (crashed, killed) but the mount is still there, it is
    removed with `fusermount3 -u`; written data that was fsync'd is kept in the
    cache and uploaded at the next mount.

    \b
    Examples:
      nerdfs umount ~/data
      nerdfs umount ~/data --no-wait -o json

    Exit codes: 0 unmounted, 2 still in use, 4 no mount at MOUNTPOINT,
    6 store error while committing.
    """
    from . import control

    mnt = Path(os.path.realpath(mountpoint))
    forced = False
    try:
        with _progress_line(output) as progress:
            reply = control.call(mnt, {"op": "umount", "wait": not no_wait}, on_progress=progress)
    except NotFound:
        fstype = mounted_fs(mnt)
        if fstype is None or not fstype.startswith("fuse"):
            raise
        _fusermount(mnt)
        forced = True
        reply = {}
        click.echo(f"nerdfs: warning: no nerdfs daemon answers for {mnt} (crashed?): "
                   f"unmounted it with fusermount3 -u", err=True)
    _wait_unmounted(mnt, UMOUNT_TIMEOUT)
    doc = {"mountpoint": str(mnt), **reply, "forced": forced, "unmounted": True}
    lines = [f"{name}  {snap}" for name, snap in (reply.get("snapshots") or {}).items()]
    if reply.get("pending_chunks"):
        lines.append(f"{reply['pending_chunks']} chunks not uploaded yet: they resume at the next mount")
    _emit(output, doc, "\n".join([*lines, f"unmounted {mnt}"]))


def _fusermount(mnt: Path) -> None:
    try:
        r = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise ConfigError("fusermount3 is not installed (apt-get install fuse3)") from None
    except subprocess.TimeoutExpired:
        raise NerdError(f"fusermount3 -u {mnt} did not finish within 30 s") from None
    if r.returncode != 0:
        why = " ".join(r.stderr.split()) or f"exit status {r.returncode}"
        raise UsageError(f"fusermount3 -u {mnt} failed: {why} (close what uses it, or fusermount3 -uz {mnt})")


def _wait_unmounted(mnt: Path, timeout: float) -> None:
    from . import control

    deadline = time.monotonic() + timeout
    while mounted_fs(mnt) is not None or control.daemon_running(mnt):
        if time.monotonic() > deadline:
            raise NerdError(f"{mnt} is still mounted {timeout:g} s after the nerdfs daemon agreed to unmount it; "
                            "see mount.log in its cache directory")
        time.sleep(0.05)


def mounted_fs(path: str | os.PathLike) -> str | None:
    """The filesystem type mounted exactly at ``path`` (e.g. ``fuse.nerdfs``), None if it is no mount point.

    Reads /proc/self/mountinfo, so a FUSE mount whose daemon died still counts
    (``os.path.ismount`` says False for it: stat fails with ENOTCONN).
    """
    real = os.path.realpath(path)
    try:
        raw = Path("/proc/self/mountinfo").read_bytes()
    except OSError:
        return "unknown" if os.path.ismount(real) else None
    found = None
    for line in raw.splitlines():
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-")
        except ValueError:
            continue
        point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
        if os.fsdecode(point) == real and sep + 1 < len(fields):
            found = fields[sep + 1].decode(errors="replace")  # the last one is on top
    return found


# --- output ---------------------------------------------------------------------------------------------------

def _emit(output: str, doc: Any, text: str | None) -> None:
    if output == "json":
        click.echo(json.dumps(doc, indent=2, default=str))
    elif text:
        click.echo(text)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def progress_text(p: dict) -> str:
    """One line for a progress message: phase, dataset, bytes/chunks done of total, rate, message."""
    parts = [str(p.get("phase") or "working")]
    if p.get("dataset"):
        parts.append(str(p["dataset"]))
    done, total = p.get("bytes_done"), p.get("bytes_total")
    if _num(total) and total > 0 and _num(done):
        parts.append(f"{human_bytes(done)} of {human_bytes(total)} ({100 * done / total:.0f}%)")
    elif _num(done):
        parts.append(human_bytes(done))
    cdone, ctotal = p.get("chunks_done"), p.get("chunks_total")
    if _num(ctotal) and _num(cdone):
        parts.append(f"{cdone}/{ctotal} chunks")
    if _num(p.get("rate")):
        parts.append(f"{human_bytes(p['rate'])}/s")
    if p.get("message"):
        parts.append(str(p["message"]))
    return "  ".join(parts)


class _ProgressLine:
    def __init__(self) -> None:
        self.shown = False

    def __call__(self, p: dict) -> None:
        sys.stderr.write("\r\x1b[K" + progress_text(p)[:200])
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


class _progress_line:
    """A progress callback that redraws one line on stderr; None when output is JSON or stderr is no terminal."""

    def __init__(self, output: str) -> None:
        self.line = _ProgressLine() if output == "text" and sys.stderr.isatty() else None

    def __enter__(self) -> Callable[[dict], None] | None:
        return self.line

    def __exit__(self, *exc: Any) -> None:
        if self.line is not None:
            self.line.clear()


_STATUS_KEYS = ("mountpoint", "store", "read_only", "pid", "datasets", "dirty_bytes", "pending_chunks",
                "pending_bytes", "upload_rate", "cache_used", "cache_limit", "last_error")


def format_status(mountpoint: Path, s: dict) -> str:
    """A readable summary of whatever a status reply holds (unknown keys are listed as they come)."""
    rows: list[tuple[str, str]] = [("mount", str(s.get("mountpoint") or mountpoint)
                                    + (" (read-only)" if s.get("read_only") else ""))]
    if s.get("store"):
        rows.append(("store", str(s["store"])))
    if s.get("pid"):
        rows.append(("pid", str(s["pid"])))
    rows.extend(_dataset_rows(s.get("datasets")))
    if _num(s.get("dirty_bytes")):
        rows.append(("unsaved", f"{human_bytes(s['dirty_bytes'])} changed since the last snapshot"))
    if _num(s.get("pending_chunks")) or _num(s.get("pending_bytes")):
        what = [f"{s['pending_chunks']} chunks" if _num(s.get("pending_chunks")) else "",
                human_bytes(s["pending_bytes"]) if _num(s.get("pending_bytes")) else ""]
        rate = f" at {human_bytes(s['upload_rate'])}/s" if _num(s.get("upload_rate")) else ""
        rows.append(("to upload", ", ".join(w for w in what if w) + rate))
    elif _num(s.get("upload_rate")):
        rows.append(("upload rate", f"{human_bytes(s['upload_rate'])}/s"))
    if _num(s.get("cache_used")):
        limit = f" of {human_bytes(s['cache_limit'])}" if _num(s.get("cache_limit")) else ""
        rows.append(("cache", f"{human_bytes(s['cache_used'])}{limit}"))
    if "last_error" in s:
        rows.append(("last error", str(s["last_error"]) if s["last_error"] else "none"))
    for key, value in s.items():
        if key not in _STATUS_KEYS:
            rows.append((key.replace("_", " "), value if isinstance(value, str) else json.dumps(value, default=str)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k + ':':<{width + 1}}  {v}".rstrip() for k, v in rows)


def _value(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if _num(v) and key.endswith("bytes"):
        return human_bytes(v)
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _dataset_rows(datasets: Any) -> Iterator[tuple[str, str]]:
    if datasets is None:
        return
    if isinstance(datasets, dict):
        items = list(datasets.items())
    elif isinstance(datasets, list):
        items = [(d.get("name", "?"), {k: v for k, v in d.items() if k != "name"}) if isinstance(d, dict)
                 else (str(d), None) for d in datasets]
    else:
        yield ("datasets", str(datasets))
        return
    yield ("datasets", str(len(items)) if items else "none")
    for name, info in items:
        if isinstance(info, dict):
            desc = ", ".join(f"{k.replace('_', ' ')} {_value(k, v)}" for k, v in info.items())
        else:
            desc = "" if info is None else str(info)
        yield (f"  {name}", desc)


# --- entry point ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    """Entry point: one clear line per error, a documented exit code, tracebacks only with NERD_DEBUG=1."""
    args = sys.argv[1:] if argv is None else list(argv)
    console.run(cli, "nerdfs", args, debug=bool(os.environ.get("NERD_DEBUG")),
                debug_hint="set NERD_DEBUG=1 for a traceback")
