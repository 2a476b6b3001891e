"""The mount daemon: pyfuse3 + trio, the uploader, periodic commits, the control channel.

``run(options)`` blocks until the filesystem is unmounted (``nerdfs umount``,
``fusermount3 -u`` or SIGTERM). On the way out it commits what is dirty and,
unless told not to wait, uploads everything; whatever it could not upload
stays journaled and the next mount resumes it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import time

import pyfuse3
import trio

from .. import control
from ..contents import Contents
from ..datasets import Datasets
from ..errors import NerdError, UsageError
from ..mountopts import MountOptions
from ..repo import Repository
from ..uploader import Journal, Uploader
from ..objects import Snapshot
from ..workspace import ROOT, FsError, Workspace
from .ops import Operations
from .snapshots import SnapshotView

log = logging.getLogger(__name__)


class Mount:
    """Everything one mounted filesystem owns, and the commit logic."""

    def __init__(self, options: MountOptions) -> None:
        self.options = options
        self.cache_dir = options.cache_dir
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.cache_dir / "mount.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UsageError(f"cache dir {self.cache_dir} is in use by another mount — give this one its own "
                             f"--cache-dir") from None
        self.repo = Repository.open(options.store, s3=options.s3, cache_dir=self.cache_dir,
                                    cache_size=options.cache_size)
        self.datasets = Datasets(self.repo)
        self.ws = Workspace(self.repo.index)
        self.ws.load_tree = self.repo.get_tree
        self.journal = Journal(self.repo, self.cache_dir, options.cache_size)
        self.contents = Contents(self.repo, self.ws, self.journal, self.cache_dir)
        self.uploader = Uploader(self.journal, concurrency=options.threads)
        self.ops = Operations(self.ws, self.contents, str(self.cache_dir), read_only=options.read_only,
                              snapshots=SnapshotView(self.repo, self.ws.uid, self.ws.gid))
        self.uploader.fs_busy = lambda: time.monotonic() - self.ops.last_request < 0.2
        self.commit_lock = trio.Lock()
        self.last_commit: dict[str, str] = {}
        self.last_error: str | None = None

    def recover(self) -> None:
        """After a crash: cut staging files left behind into chunks, drop unlinked inodes."""
        for node in self.ws.staged():
            if node.nlink == 0:
                continue
            self.contents.flush(node.ino)
            self.contents.unstage(node.ino)
        for ino in self.ws.orphans():
            self.ws.drop(ino)
            self.contents.drop(ino)

    def refresh(self) -> list[str]:
        """At mount time: show the store's datasets as they are now."""
        return self.apply_heads(self.remote_heads())

    def remote_heads(self) -> dict[str, tuple[str, Snapshot, list[bytes]]]:
        """The store's datasets whose head this mount does not show yet (store I/O only: run it in a thread).

        Also reads the store's chunk list into the index (at most daily), so
        data that is already stored is deduplicated, not uploaded again.
        """
        self.repo.refresh_known()
        heads = {}
        for name in self.datasets.names():
            head = self.datasets.head(name)
            if head is not None and head.snapshot != self.ws.base(name):
                snap = self.repo.get_snapshot(head.snapshot)
                names = [os.fsencode(e.name) for e in self.repo.get_tree(snap.tree).entries]
                heads[name] = (head.snapshot, snap, names)
        return heads

    def apply_heads(self, heads: dict[str, tuple[str, Snapshot, list[bytes]]]) -> list[str]:
        """New datasets appear, clean ones move to their new head; returns the names that changed.

        Runs without an await between the checks and the change, so no write
        can slip in between: a dataset with unsaved changes or a file open for
        writing keeps its working tree (its next commit merges instead).
        """
        local = self.ws.dataset_dirs()
        dirty = set(self.ws.dirty())
        changed = []
        for name, (sid, snap, names) in sorted(heads.items()):
            if name not in local:
                self.ws.attach_dataset(name, snap.tree, snap.root_mode, snap.root_mtime_ns)
                self._invalidate(ROOT, [name.encode()])
            elif name in dirty or self.ws.base(name) == sid or self.ops.writing(name):
                continue
            else:
                ino = local[name].ino
                shown = [] if local[name].tree else [n for _, n, _ in self.ws.entries(ino)]
                self.ws.replace_dataset_tree(name, snap.tree, snap.root_mode, snap.root_mtime_ns)
                self._invalidate(ino, sorted(set(shown) | set(names)))  # gone names, and new ones cached as missing
            self.ws.set_base(name, sid, clean=True)
            changed.append(name)
        return changed

    def _invalidate(self, parent: int, names: list[bytes]) -> None:
        """Make the kernel forget what it cached of a directory that changed under it."""
        if not self._mounted:
            return
        for name in names:
            pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
        try:
            pyfuse3.invalidate_inode(parent, attr_only=True)
        except OSError:
            pass

    _mounted = False

    async def pull(self) -> list[str]:
        """Follow other clients' commits now (``nerdfs sync``, the control op ``refresh``, periodically)."""
        async with self.commit_lock:  # a commit moves heads too: never look in the middle of one
            heads = await trio.to_thread.run_sync(self.remote_heads)
            return self.apply_heads(heads)

    async def periodic_refresh(self) -> None:
        while True:
            await trio.sleep(self.options.refresh_interval)
            try:
                await self.pull()
            except NerdError as e:
                self.last_error = str(e)
                log.warning("refresh failed: %s", e)
            except Exception as e:  # noqa: BLE001 - a background refresh must never take the mount down
                self.last_error = f"refresh failed: {e}"
                log.exception("refresh failed")

    # ------------------------------------------------------------------ commit

    async def commit(self, names: list[str] | None = None, progress=None) -> dict[str, str]:
        """Make dirty datasets snapshots, once everything written before the call is in the store."""
        async with self.commit_lock:
            local = self.ws.dataset_dirs()
            wanted = set(names) if names else set(local)
            unknown = wanted - set(local)
            if unknown:
                raise UsageError(f"no dataset {sorted(unknown)[0]!r} in this mount")
            dirty = [n for n in self.ws.dirty() if n in wanted and n in local]
            # Clear first: a write during the commit marks it dirty again.
            for name in dirty:
                self.ws.set_base(name, self.ws.base(name), clean=True)
            try:
                await self.ops.flush_all(set(dirty))
                result = {}
                for name in dirty:
                    for attempt in range(5):
                        try:
                            result[name] = await self._commit_one(name, local[name].ino, progress)
                            break
                        except FsError as e:  # a file was written again since the flush: flush, retry
                            if e.errno != errno.EAGAIN or attempt == 4:
                                raise NerdError(f"dataset {name}: files keep changing; commit later") from None
                            await self.ops.flush_all({name})
            except BaseException:
                for name in dirty:
                    self.ws.mark_dirty(name)
                raise
            self.last_commit.update(result)
            return {n: self.ws.base(n) or "" for n in wanted if self.ws.base(n)}

    async def _commit_one(self, name: str, ino: int, progress=None) -> str:
        """Trees now, then wait for exactly the chunks they name (not for later writes), then the snapshot."""
        waiting: set[str] = set()

        def seen(cid: str) -> None:
            if self.journal.has(cid):
                waiting.add(cid)

        tree, files, size = await trio.to_thread.run_sync(
            lambda: self.ws.tree_of(ino, lambda t: self.repo.put_tree(t)[0], seen))

        def remaining() -> int:
            nonlocal waiting
            waiting = {c for c in waiting if self.journal.has(c)}
            return len(waiting)

        await self.uploader.wait_until_stored(remaining, progress)
        return await trio.to_thread.run_sync(self._snapshot, name, ino, tree, files, size)

    def _snapshot(self, name: str, ino: int, tree: str, files: int, size: int) -> str:
        node = self.ws.get(ino)
        root = (node.mode & 0o7777, node.mtime_ns)
        base = self.ws.base(name)
        if base:
            old = self.repo.get_snapshot(base)
            if (old.tree, old.root_mode, old.root_mtime_ns) == (tree, *root):
                return base
        sid, snap = self.datasets.commit(name, tree, parent=base, message="nerdfs commit", files=files, size=size,
                                         root=root)
        if snap.tree != tree:  # merged with another client's commit: show the merged tree
            self.ws.replace_dataset_tree(name, snap.tree)
            try:
                pyfuse3.invalidate_inode(ino)
            except OSError:
                pass
        self.ws.set_base(name, sid, clean=False)
        return sid

    async def periodic_commits(self) -> None:
        while True:
            await trio.sleep(self.options.commit_interval)
            if self.ws.dirty():
                try:
                    await self.commit()
                except NerdError as e:
                    self.last_error = str(e)
                    log.warning("periodic commit failed: %s", e)

    # ------------------------------------------------------------------ control

    def status(self) -> dict:
        return {
            "mountpoint": str(self.options.mountpoint),
            "pid": os.getpid(),
            "read_only": self.options.read_only,
            "store": self.repo.url,
            "datasets": sorted(self.ws.dataset_dirs()),
            "dirty": sorted(self.ws.dirty()),
            "open_files": len(self.ops.opened),
            "pending_chunks": len(self.journal),
            "pending_bytes": self.journal.pending_bytes,
            "uploaded_bytes": self.uploader.uploaded_bytes,
            "upload_rate": round(self.uploader.rate),
            "cache_used": self.repo.cache.used,
            "cache_limit": self.options.cache_size,
            "last_error": self.uploader.last_error or self.last_error,
            "last_commit": self.last_commit,
        }

    async def handle(self, request: dict, send_progress) -> dict:
        op = request.get("op")
        if op == "status":
            return self.status()
        if op == "sync":
            snaps = await self.commit(request.get("datasets") or None, send_progress)
            await self.pull()
            return {"snapshots": snaps}
        if op == "refresh":
            return {"changed": await self.pull(), "datasets": sorted(self.ws.dataset_dirs())}
        if op == "umount":
            # Commit and upload while still mounted, so `nerdfs umount` returns
            # only when the data is in the store; --no-wait leaves it journaled.
            self.wait_on_exit = bool(request.get("wait", True))
            snaps = {}
            if self.wait_on_exit:
                snaps = await self.commit(None, send_progress)
                # also what no snapshot names (overwritten since): nothing is left over
                await self.uploader.wait_until_stored(lambda: len(self.journal), send_progress)
            pyfuse3.terminate()
            return {"unmounting": True, "snapshots": snaps}
        raise UsageError(f"unknown control operation {op!r}")

    wait_on_exit = True

    def close(self) -> None:
        self.repo.close()
        os.close(self._lock_fd)


def _mount_options(read_only: bool) -> set[str]:
    opts = set(pyfuse3.default_options)
    opts.discard("default_permissions")
    opts |= {"fsname=nerdfs", "subtype=nerdfs", "default_permissions"}
    if os.getuid() == 0:
        opts.add("allow_other")
    if read_only:
        opts.add("ro")
    return opts


# The kernel's defaults for a FUSE device are for untrusted daemons: 128 KiB
# read-ahead, and at most 1% of the dirty page cache, a cap that throttles a
# plain `cp` into the mount to a fraction of what the daemon takes in.
_BDI_TUNING = {"read_ahead_kb": "1024", "max_ratio": "20"}


async def _tune_bdi(mountpoint: str) -> None:
    """1 MiB read-ahead (doubles sequential reads, COMPONENTS.md) and a larger share of dirty pages.

    Set after the kernel's INIT handshake, which resets read-ahead; only root
    may. The device number comes from /proc/self/mountinfo: stat() on our own
    mount point would wait for this very daemon.
    """
    await trio.sleep(0.02)  # the INIT request is the first the loop serves
    dev = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4] == mountpoint:
                    dev = fields[2]
    except OSError:
        return
    for delay in (0, 0.2, 1.0):  # again, in case the kernel handled INIT only after our first try
        await trio.sleep(delay)
        for name, value in _BDI_TUNING.items():
            try:
                with open(f"/sys/class/bdi/{dev}/{name}", "w") as f:
                    f.write(value)
            except OSError as e:
                log.debug("cannot set %s of the mount's device %s: %s", name, dev, e)


async def _main(m: Mount, socket: str) -> None:
    opts = m.options
    async with trio.open_nursery() as nursery:
        await nursery.start(control.serve, socket, m.handle)
        nursery.start_soon(m.uploader.run)
        nursery.start_soon(m.periodic_commits)
        nursery.start_soon(m.periodic_refresh)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async def on_signal() -> None:
                async for _ in signals:
                    pyfuse3.terminate()
                    return
            nursery.start_soon(on_signal)
            nursery.start_soon(_tune_bdi, str(opts.mountpoint))
            m._mounted = True
            opts.signal_ready()
            await pyfuse3.main()
        # Unmounted (also by fusermount3 -u or a signal): commit what is dirty,
        # which waits for the uploads, unless told not to wait. What is left
        # stays journaled; the next mount resumes it.
        if m.wait_on_exit:
            try:
                await m.commit()
            except NerdError as e:
                log.error("final commit failed (the data stays journaled for the next mount): %s", e)
        nursery.cancel_scope.cancel()


def run(options: MountOptions) -> None:
    """Mount, serve until unmounted, commit and upload, return."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    m = Mount(options)
    try:
        m.recover()
        m.refresh()
        # Nothing may touch the mount point between init and the main loop:
        # the kernel would wait for this very process (so: resolve paths first).
        socket = str(control.socket_path(options.mountpoint))
        pyfuse3.init(m.ops, str(options.mountpoint), _mount_options(options.read_only))
        try:
            trio.run(_main, m, socket)
        finally:
            try:
                pyfuse3.close(unmount=True)
            except Exception:  # noqa: BLE001 - already unmounted from outside
                pass
    except FsError as e:
        raise UsageError(f"mount {options.mountpoint}: {os.strerror(e.errno)}") from None
    finally:
        m.close()

