"""pyfuse3 operations: thin handlers over :class:`Workspace` and :class:`Contents`.

Handlers translate between FUSE and the working trees and keep the little
state only the kernel conversation needs: lookup counts, open handles and,
for files open for writing, their size and mtime (persisted on flush). CPU
and store work (filling a staging file, cutting it into chunks, fetching
chunks) runs in worker threads.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from dataclasses import dataclass

import pyfuse3
import trio

from ..contents import Contents, WouldBlock
from ..datasets import NAME_RE
from ..errors import IntegrityError, NerdError
from ..workspace import ROOT, FsError, Inode, Workspace
from .snapshots import NAME as SNAPSHOTS
from .snapshots import SnapshotView

log = logging.getLogger(__name__)
_TIMEOUT = 1.0  # attribute/entry cache: >0 keeps `ls -l` of 10k files fast
_INLINE_BYTES = 64 * 1024  # files this small are staged and chunked on the trio loop, without a thread hop


@dataclass
class _Open:
    """A file with open handles."""

    handles: int = 0
    writers: int = 0
    size: int | None = None  # while written: the authoritative size
    mtime_ns: int | None = None
    written: bool = False


def _errors(fn):
    """Map our errors to errnos: FsError as is, integrity problems as EIO, store trouble as EIO."""

    async def wrapper(self, *args, **kwargs):
        self.last_request = time.monotonic()
        try:
            return await fn(self, *args, **kwargs)
        except FsError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except IntegrityError as e:
            log.error("%s", e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except NerdError as e:
            log.error("%s", e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise pyfuse3.FUSEError(e.errno) from None
            log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except pyfuse3.FUSEError:
            raise
        except Exception:  # a bug in one request must not take the whole mount down
            log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    wrapper.__name__ = fn.__name__
    return wrapper


class Operations(pyfuse3.Operations):
    enable_writeback_cache = True

    def __init__(self, ws: Workspace, contents: Contents, cache_dir: str, read_only: bool = False,
                 snapshots: SnapshotView | None = None) -> None:
        super().__init__()
        self.ws = ws
        self.view = snapshots
        self.contents = contents
        self.cache_dir = cache_dir
        self.read_only = read_only
        self.lookups: dict[int, int] = {}
        self.opened: dict[int, _Open] = {}
        self._handles: dict[int, list] = {}  # fh -> [ino, writable, staged, clean inode for reads]
        self._settling: dict[int, trio.Event] = {}  # streaming files becoming staging files
        self.last_request = 0.0  # monotonic time of the latest request (the uploader yields to them)
        self._next_fh = 1

    # ------------------------------------------------------------------ helpers

    def _attr(self, node: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        st = self.opened.get(node.ino)
        a.st_ino = node.ino
        a.st_mode = node.mode
        a.st_nlink = node.nlink
        a.st_uid, a.st_gid = node.uid, node.gid
        a.st_size = st.size if st and st.size is not None else node.size
        a.st_atime_ns = node.atime_ns
        a.st_mtime_ns = st.mtime_ns if st and st.mtime_ns is not None else node.mtime_ns
        a.st_ctime_ns = node.ctime_ns
        a.st_blksize = 1 << 20  # cp and friends size their writes by it: 1 MiB requests cost less
        a.st_blocks = (a.st_size + 511) // 512
        a.attr_timeout = a.entry_timeout = _TIMEOUT
        a.generation = 0
        return a

    def _entry(self, node: Inode) -> pyfuse3.EntryAttributes:
        self.lookups[node.ino] = self.lookups.get(node.ino, 0) + 1
        return self._attr(node)

    def _writable(self, *inodes: int) -> None:
        if self.read_only or any(SnapshotView.owns(i) for i in inodes):
            raise FsError(errno.EROFS)

    async def _call(self, fn, *args, cheap: bool = False):
        """Run ``fn`` in a worker thread, or inline when ``cheap``: a thread hop costs more than a
        short LMDB transaction, and small-file workloads are made of those."""
        if cheap:
            try:
                return fn(*args)
            except WouldBlock:  # a worker thread holds the file: wait for it off the loop
                pass
        return await trio.to_thread.run_sync(fn, *args)

    def _expanded(self, *inodes: int) -> bool:
        """Whether these directories need no store reads (their entries are in LMDB already)."""
        try:
            return all(self.ws.get(i).tree is None for i in inodes)
        except FsError:
            return True

    def _node(self, ino: int):
        """A workspace inode, or a read-only one of the snapshot view."""
        if SnapshotView.owns(ino):
            if self.view is None:
                raise FsError(errno.ENOENT)
            return self.view.get(ino)
        return self.ws.get(ino)

    def _check_parent(self, parent: int) -> None:
        if parent == ROOT:
            raise FsError(errno.EPERM)  # only dataset directories live at the top

    def _maybe_drop(self, ino: int) -> None:
        if SnapshotView.owns(ino) or self.lookups.get(ino, 0) > 0 or ino in self.opened:
            return
        if self.ws.drop(ino):
            self.contents.drop(ino)

    # ------------------------------------------------------------------ metadata

    @_errors
    async def lookup(self, parent_inode, name, ctx=None):
        if name == b".":
            return self._entry(self._node(parent_inode))
        if parent_inode == ROOT and name == SNAPSHOTS and self.view is not None:
            return self._entry(self.view.root)
        if SnapshotView.owns(parent_inode):
            return self._entry(await trio.to_thread.run_sync(self.view.lookup, parent_inode, name))
        try:
            node = await self._call(self.ws.lookup, parent_inode, name, cheap=self._expanded(parent_inode))
        except FsError as e:
            if e.errno != errno.ENOENT:
                raise
            # A negative entry the kernel may cache: rsync and editors look up every name before
            # creating it. Only this daemon changes a working tree, so the kernel hears of every
            # creation; another client's commit invalidates the names it brings (Mount.apply_heads).
            missing = pyfuse3.EntryAttributes()
            missing.st_ino = 0
            missing.entry_timeout = _TIMEOUT
            return missing
        return self._entry(node)

    @_errors
    async def getattr(self, inode, ctx=None):
        return self._attr(self._node(inode))

    @_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        self._writable(inode)
        node = self.ws.get(inode)
        now = time.time_ns()
        changes: dict = {"ctime_ns": now}
        if fields.update_size:
            if not node.is_file:
                raise FsError(errno.EINVAL)
            # Truncate through a handle of our own, so the staging file stays open
            # for us and is flushed by the last release like any write.
            fh = self._new_handle(inode, True)
            try:
                await self._prepare_write(fh, False)
                await self._settle(inode)
                await self._call(self.contents.truncate, inode, attr.st_size, cheap=True)
                st = self.opened[inode]
                st.size, st.mtime_ns = attr.st_size, now
                st.written = True
                self.contents.mark_unflushed(inode)
            finally:
                await self.release(fh)
            changes["mtime_ns"] = now
        st = self.opened.get(inode)
        if fields.update_mode:
            changes["mode"] = (node.mode & ~0o7777) | (attr.st_mode & 0o7777)
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime_ns"] = attr.st_mtime_ns
            if st:
                st.mtime_ns = attr.st_mtime_ns
        return self._attr(self.ws.update(inode, **changes))

    @_errors
    async def readlink(self, inode, ctx):
        node = self._node(inode)
        if not stat.S_ISLNK(node.mode):
            raise FsError(errno.EINVAL)
        return os.fsencode(node.target)

    @_errors
    async def opendir(self, inode, ctx):
        if not self._node(inode).is_dir:
            raise FsError(errno.ENOTDIR)
        return inode

    @_errors
    async def readdir(self, fh, start_id, token):
        if SnapshotView.owns(fh):
            def listing():
                names = sorted(self.view.children(fh).items())
                return [(i + 1, name, self.view.nodes[ino]) for i, (name, ino) in enumerate(names)][start_id:]
            entries = await trio.to_thread.run_sync(listing)
        else:
            entries = await self._call(lambda: list(self.ws.entries(fh, start_id)), cheap=self._expanded(fh))
        for cookie, name, node in entries:
            if not pyfuse3.readdir_reply(token, name, self._entry(node), cookie):
                self.lookups[node.ino] -= 1  # not handed to the kernel after all
                break

    async def releasedir(self, fh):
        pass

    @_errors
    async def statfs(self, ctx):
        sv = os.statvfs(self.cache_dir)
        s = pyfuse3.StatvfsData()
        s.f_bsize, s.f_frsize = sv.f_bsize, sv.f_frsize
        s.f_blocks, s.f_bfree, s.f_bavail = sv.f_blocks, sv.f_bfree, sv.f_bavail
        s.f_files, s.f_ffree, s.f_favail = sv.f_files, sv.f_ffree, sv.f_favail
        s.f_namemax = 255
        return s

    def forget(self, inode_list):
        for ino, n in inode_list:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
                continue
            self.lookups.pop(ino, None)
            try:
                self._maybe_drop(ino)
            except Exception:  # noqa: BLE001 - forget must not fail
                log.exception("forget %d", ino)

    # ------------------------------------------------------------------ namespace

    @_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        self._writable(parent_inode)
        if parent_inode == ROOT:
            if not NAME_RE.match(os.fsdecode(name)):
                raise FsError(errno.EINVAL)
            node = self.ws.attach_dataset(os.fsdecode(name), None)
            self.ws.mark_dirty(node.dataset)
        else:
            node = self.ws.create(parent_inode, name, stat.S_IFDIR | (mode & 0o7777))
        node = self.ws.update(node.ino, uid=ctx.uid, gid=ctx.gid)
        return self._entry(node)

    @_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self._writable(parent_inode)
        self._check_parent(parent_inode)
        if not stat.S_ISREG(mode) and not stat.S_ISFIFO(mode) and not stat.S_ISSOCK(mode):
            raise FsError(errno.EPERM)  # device nodes have no place in a dataset
        node = self.ws.create(parent_inode, name, mode)
        return self._entry(self.ws.update(node.ino, uid=ctx.uid, gid=ctx.gid))

    @_errors
    async def symlink(self, parent_inode, name, target, ctx):
        self._writable(parent_inode)
        self._check_parent(parent_inode)
        node = self.ws.create(parent_inode, name, stat.S_IFLNK | 0o777, target=os.fsdecode(target))
        return self._entry(self.ws.update(node.ino, uid=ctx.uid, gid=ctx.gid))

    @_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self._writable(inode, new_parent_inode)
        self._check_parent(new_parent_inode)
        return self._entry(self.ws.link(inode, new_parent_inode, new_name))

    @_errors
    async def unlink(self, parent_inode, name, ctx):
        self._writable(parent_inode)
        node = await self._call(lambda: self.ws.remove(parent_inode, name, is_dir=False),
                                cheap=self._expanded(parent_inode))
        if node.nlink == 0:
            self._maybe_drop(node.ino)

    @_errors
    async def rmdir(self, parent_inode, name, ctx):
        self._writable(parent_inode)
        self._check_parent(parent_inode)
        node = await self._call(lambda: self.ws.remove(parent_inode, name, is_dir=True), cheap=False)
        self._maybe_drop(node.ino)

    @_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._writable(parent_inode_old, parent_inode_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise FsError(errno.EINVAL)
        if ROOT in (parent_inode_old, parent_inode_new):
            raise FsError(errno.EPERM)
        old_parent, new_parent = self.ws.get(parent_inode_old), self.ws.get(parent_inode_new)
        if old_parent.dataset != new_parent.dataset:
            raise FsError(errno.EXDEV)  # mv copies across datasets
        victim = await self._call(
            lambda: self.ws.rename(parent_inode_old, name_old, parent_inode_new, name_new,
                                   noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE)),
            cheap=self._expanded(parent_inode_old, parent_inode_new))
        if victim is not None and victim.nlink == 0:
            self._maybe_drop(victim.ino)

    # ------------------------------------------------------------------ xattrs

    @_errors
    async def setxattr(self, inode, name, value, ctx):
        self._writable(inode)
        if name.startswith(b"system."):
            # No POSIX ACLs: storing the blob would let `cp -a` skip its chmod
            # (it sets modes through the ACL), leaving files with the wrong mode.
            raise FsError(errno.EOPNOTSUPP)
        self.ws.setxattr(inode, name, value)

    @_errors
    async def getxattr(self, inode, name, ctx):
        value = None if SnapshotView.owns(inode) else self.ws.getxattr(inode, name)
        if value is None:
            raise FsError(pyfuse3.ENOATTR)
        return value

    @_errors
    async def listxattr(self, inode, ctx):
        return [] if SnapshotView.owns(inode) else self.ws.listxattr(inode)

    @_errors
    async def removexattr(self, inode, name, ctx):
        self._writable(inode)
        self.ws.removexattr(inode, name)

    # ------------------------------------------------------------------ files

    def _new_handle(self, ino: int, writable: bool) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = [ino, writable, False, None]
        st = self.opened.setdefault(ino, _Open())
        st.handles += 1
        st.writers += writable
        return fh

    async def _stage(self, fh: int, empty: bool = False) -> None:
        """Make sure this handle holds its file's staging buffer (each handle holds at most one reference).

        ``empty``: the file is being truncated (O_TRUNC), so its old content need not be read.
        """
        h = self._handles[fh]
        if h[2]:
            return
        node = self.ws.get(h[0])
        small = (empty or node.size <= _INLINE_BYTES) and not SnapshotView.owns(h[0])
        await self._call(self.contents.stage, h[0], empty, cheap=small and (empty or all(
            self.contents.journal.has(c) for c, _ in node.chunks)))
        h[2] = True

    async def _prepare_write(self, fh: int, truncate: bool) -> None:
        """Stage the file for a handle that is already registered (so no release can unstage it meanwhile)."""
        ino = self._handles[fh][0]
        st = self.opened[ino]
        await self._stage(fh, empty=truncate)
        if st.size is None:
            st.size = self.ws.get(ino).size
        if truncate:
            await self._settle(ino)
            await self._call(self.contents.truncate, ino, 0, cheap=True)
            st.size, st.mtime_ns, st.written = 0, time.time_ns(), True
            self.contents.mark_unflushed(ino)

    @_errors
    async def open(self, inode, flags, ctx):
        self._node(inode)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable:
            self._writable(inode)
        fh = self._new_handle(inode, writable)
        if writable:
            try:
                await self._prepare_write(fh, bool(flags & os.O_TRUNC))
            except BaseException:
                await self.release(fh)
                raise
        return pyfuse3.FileInfo(fh=fh, keep_cache=not writable)

    @_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        self._writable(parent_inode)
        self._check_parent(parent_inode)
        node = self.ws.create(parent_inode, name, stat.S_IFREG | (mode & 0o7777))
        node = self.ws.update(node.ino, uid=ctx.uid, gid=ctx.gid)
        fh = self._new_handle(node.ino, True)
        try:
            await self._prepare_write(fh, False)
        except BaseException:
            await self.release(fh)
            raise
        return pyfuse3.FileInfo(fh=fh), self._entry(node)

    @_errors
    async def read(self, fh, off, size):
        h = self._handles[fh]
        ino = h[0]
        st = self.opened.get(ino)
        node = h[3]
        if node is None or (st and st.writers):
            # Decoding a big inode per 128 KiB request is costly: keep it while nobody writes.
            node = h[3] = self._node(ino)
        if node.staged or self.contents.in_memory(ino):
            await self._stage(fh)
            await self._settle(ino)
            return await self._call(self.contents.pread, ino, size, off, cheap=True)
        return await trio.to_thread.run_sync(self.contents.read_chunks, node, off, size)

    @_errors
    async def write(self, fh, off, buf):
        ino, writable, _, _ = self._handles[fh]
        if not writable:
            raise FsError(errno.EBADF)
        await self._settle(ino, off)
        n = await self._call(self.contents.pwrite, ino, buf, off, cheap=True)
        if self.contents.backlogged(ino):  # the writer outruns the chunker: wait for it, off the loop
            await trio.to_thread.run_sync(self.contents.catch_up, ino)
        st = self.opened[ino]
        if st.size is None:
            st.size = self.ws.get(ino).size
        self.contents.mark_unflushed(ino)  # a no-op unless the buffer was clean
        st.written = True
        st.size = max(st.size or 0, off + n)
        st.mtime_ns = time.time_ns()
        return n

    async def _settle(self, ino: int, write_at: int | None = None) -> None:
        """Before a request that is not an append to a streaming file: make it a staging file.

        Runs in a thread (it may read the file back); other requests for the
        file wait for it, so none can slip into the old buffer meanwhile.
        """
        while ino in self._settling:
            await self._settling[ino].wait()
        if not self.contents.must_settle(ino, write_at):
            return
        done = self._settling[ino] = trio.Event()
        try:
            await trio.to_thread.run_sync(self.contents.settle, ino)
        finally:
            del self._settling[ino]
            done.set()

    async def _persist(self, ino: int, durable: bool) -> None:
        """Cut the file's new content into chunks (which sets its size), then record its mtime."""
        st = self.opened.get(ino)
        written = bool(st and st.written)
        if st:
            st.written = False  # a write during the flush sets it again
        size = st.size if st and st.size is not None else self.ws.get(ino).size
        journal = self.contents.journal
        # Inline only when the journal has room: waiting for the uploader on the loop would stop it.
        cheap = size <= _INLINE_BYTES and not durable and journal.pending_bytes + size <= journal.limit
        await self._call(self.contents.flush, ino, durable, cheap=cheap)
        # After the flush, not with it: a utimensat may arrive while it runs (release is asynchronous;
        # rsync sets times right after close) and st.mtime_ns is then the time it set.
        if written:
            self.ws.update(ino, mtime_ns=st.mtime_ns, ctime_ns=st.mtime_ns)

    @_errors
    async def flush(self, fh):
        pass  # close() of one descriptor; the work happens on release of the last writer

    @_errors
    async def fsync(self, fh, datasync):
        await self._persist(self._handles[fh][0], durable=True)

    @_errors
    async def fsyncdir(self, fh, datasync):
        await trio.to_thread.run_sync(self.contents.journal.sync)

    @_errors
    async def release(self, fh):
        ino, writable, staged, _ = self._handles.pop(fh)
        st = self.opened[ino]
        st.handles -= 1
        st.writers -= writable
        if writable and st.writers == 0:
            await self._persist(ino, durable=False)
            if st.writers == 0:  # no new writer came while we flushed
                st.size = st.mtime_ns = None
        if staged:
            await self._call(self.contents.unstage, ino, cheap=True)
        # Only the release that still finds this state removes it (another
        # release or open of the same file may have run while we awaited).
        if st.handles == 0 and self.opened.get(ino) is st:
            del self.opened[ino]
            self._maybe_drop(ino)

    def writing(self, dataset: str) -> bool:
        """Whether a file of ``dataset`` is open for writing (its working tree must not be replaced)."""
        for ino, st in self.opened.items():
            if st.writers or st.written:
                try:
                    if self.ws.get(ino).dataset == dataset:
                        return True
                except FsError:
                    continue
        return False

    async def flush_all(self, datasets: set[str] | None = None) -> None:
        """Flush every file open for writing (for a commit): its content so far becomes chunks."""
        for ino, st in list(self.opened.items()):
            if st.writers and (datasets is None or self.ws.get(ino).dataset in datasets):
                await self._persist(ino, durable=False)
