"""The mount's working trees: inodes, directory entries and xattrs in LMDB.

Every top-level directory is a dataset. A directory that came from a snapshot
is *unexpanded* (it names its tree id) until something looks inside, so
mounting a huge dataset costs nothing and an untouched subtree is committed
again by id. A file's content is either its chunk list (clean) or a local
staging file (being written); :mod:`nerdfs.uploader` turns staged content
back into chunks. All methods are synchronous and short: the FUSE layer
calls them on the trio loop, and none holds a write transaction across I/O
to the store.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
import time
from dataclasses import dataclass, field
from typing import Iterator

from .datasets import NAME_RE
from .index import Index
from .objects import DIR, FILE, SYMLINK, Entry, Tree

ROOT = 1
_U64 = struct.Struct(">Q")


class FsError(Exception):
    """An errno for the FUSE layer to return."""

    def __init__(self, code: int) -> None:
        super().__init__(os.strerror(code))
        self.errno = code


class FileKind:
    """``is_dir``/``is_file`` from ``mode``, for the mount's inodes and the snapshot view's."""

    mode: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


@dataclass
class Inode(FileKind):
    ino: int
    mode: int  # full st_mode, type bits included
    uid: int = 0
    gid: int = 0
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    nlink: int = 1
    dataset: str = ""  # "" for the root
    chunks: list[tuple[str, int]] = field(default_factory=list)  # file content as last flushed
    staged: bool = False  # a staging file holds the content (reads and writes go there)
    unflushed: bool = False  # the staging file has writes not yet cut into chunks
    tree: str | None = None  # unexpanded directory: its snapshot tree
    target: str = ""  # symlink
    cookie: int = 0  # next directory cookie (directories)
    link: int = 0  # hard-link id in snapshots (files with several names)
    parent: int = 0  # directories: the one directory holding it (0: not recorded, older index)

    def to_bytes(self) -> bytes:
        d = {k: v for k, v in self.__dict__.items() if k != "ino" and v not in (None, "", [], False, 0)}
        d["mode"] = self.mode
        return json.dumps(d, separators=(",", ":")).encode()

    def copy(self) -> "Inode":
        """A shallow copy (lists are replaced, never changed in place)."""
        new = Inode.__new__(Inode)
        new.__dict__.update(self.__dict__)
        return new

    @classmethod
    def from_bytes(cls, ino: int, raw: bytes) -> "Inode":
        d = json.loads(raw)
        d["chunks"] = [(c, n) for c, n in d.get("chunks", [])]
        return cls(ino=ino, **d)


def _dkey(parent: int, name: bytes) -> bytes:
    return _U64.pack(parent) + name


def _ckey(parent: int, cookie: int) -> bytes:
    return _U64.pack(parent) + _U64.pack(cookie)


class Workspace:
    """Inodes and directory entries of all working trees, persistent in the index."""

    def __init__(self, index: Index, uid: int | None = None, gid: int | None = None) -> None:
        self.env = index.env
        self._inodes = self.env.open_db(b"ws_inodes")
        self._dirents = self.env.open_db(b"ws_dirents")  # parent+name -> child ino + cookie
        self._cookies = self.env.open_db(b"ws_cookies")  # parent+cookie -> name (readdir order)
        self._xattrs = self.env.open_db(b"ws_xattrs")  # ino+\0+name -> value
        self._meta = self.env.open_db(b"ws_meta")
        self._dirty: set[str] = set()  # datasets whose dirty flag this process has written
        self._decoded: dict[int, tuple[bytes, Inode]] = {}  # ino -> (stored bytes, their decoding)
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        with self.env.begin(write=True) as txn:
            if txn.get(_U64.pack(ROOT), db=self._inodes) is None:
                now = time.time_ns()
                root = Inode(ROOT, stat.S_IFDIR | 0o755, self.uid, self.gid, atime_ns=now, mtime_ns=now,
                             ctime_ns=now, nlink=2)
                txn.put(_U64.pack(ROOT), root.to_bytes(), db=self._inodes)
                txn.put(b"next_ino", _U64.pack(ROOT + 1), db=self._meta)

    # ------------------------------------------------------------------ inodes

    def get(self, ino: int, txn=None) -> Inode:
        if txn is None:
            with self.env.begin() as t:
                raw = t.get(_U64.pack(ino), db=self._inodes)
        else:
            raw = txn.get(_U64.pack(ino), db=self._inodes)
        if raw is None:
            raise FsError(errno.ENOENT)
        # Decoding is the bulk of a small request's cost: reuse the last decoding of the same bytes.
        hit = self._decoded.get(ino)
        if hit is not None and hit[0] == raw:
            return hit[1].copy()
        node = Inode.from_bytes(ino, raw)
        self._remember(raw, node)
        return node.copy()

    def put(self, node: Inode, txn) -> None:
        raw = node.to_bytes()
        txn.put(_U64.pack(node.ino), raw, db=self._inodes)
        self._remember(raw, node.copy())  # checked against the stored bytes on use: an abort is harmless

    def _remember(self, raw: bytes, node: Inode) -> None:
        decoded = self._decoded
        if len(decoded) >= 8192:
            try:
                del decoded[next(iter(decoded))]
            except (StopIteration, KeyError, RuntimeError):  # another thread got there first
                pass
        decoded[node.ino] = (raw, node)

    def _new_ino(self, txn) -> int:
        ino = _U64.unpack(txn.get(b"next_ino", db=self._meta))[0]
        txn.put(b"next_ino", _U64.pack(ino + 1), db=self._meta)
        return ino

    def update(self, ino: int, **changes) -> Inode:
        with self.env.begin(write=True) as txn:
            node = self.get(ino, txn)
            for k, v in changes.items():
                setattr(node, k, v)
            self.put(node, txn)
        if {"size", "mode", "uid", "gid", "mtime_ns", "chunks", "target"} & changes.keys():
            self.mark_dirty(node.dataset)
        return node

    # ------------------------------------------------------------------ directories

    def lookup(self, parent: int, name: bytes) -> Inode:
        self.expand(parent)
        with self.env.begin() as txn:
            raw = txn.get(_dkey(parent, name), db=self._dirents)
            if raw is None:
                raise FsError(errno.ENOENT)
            return self.get(_U64.unpack(raw[:8])[0], txn)

    def entries(self, parent: int, after_cookie: int = 0) -> Iterator[tuple[int, bytes, Inode]]:
        """(cookie, name, inode) in creation order, starting after ``after_cookie``."""
        self.expand(parent)
        with self.env.begin() as txn:
            cur = txn.cursor(db=self._cookies)
            prefix = _U64.pack(parent)
            if not cur.set_range(_ckey(parent, after_cookie + 1)):
                return
            for key, name in cur:
                if not key.startswith(prefix):
                    break
                cookie = _U64.unpack(key[8:])[0]
                raw = txn.get(_dkey(parent, name), db=self._dirents)
                yield cookie, bytes(name), self.get(_U64.unpack(raw[:8])[0], txn)

    def _link(self, txn, parent: Inode, name: bytes, child: int) -> None:
        parent.cookie += 1
        txn.put(_dkey(parent.ino, name), _U64.pack(child) + _U64.pack(parent.cookie), db=self._dirents)
        txn.put(_ckey(parent.ino, parent.cookie), name, db=self._cookies)

    def _unlink(self, txn, parent: int, name: bytes) -> int:
        raw = txn.get(_dkey(parent, name), db=self._dirents)
        if raw is None:
            raise FsError(errno.ENOENT)
        txn.delete(_dkey(parent, name), db=self._dirents)
        txn.delete(_ckey(parent, _U64.unpack(raw[8:16])[0]), db=self._cookies)
        return _U64.unpack(raw[:8])[0]

    def expand(self, ino: int) -> None:
        """Turn an unexpanded directory (a snapshot tree id) into inodes, one level deep."""
        node = self.get(ino)
        if node.tree is None:
            return
        tree = self.load_tree(node.tree)
        with self.env.begin(write=True) as txn:
            node = self.get(ino, txn)
            if node.tree is None:
                return
            for e in tree.entries:
                child = self._from_entry(txn, e, node.dataset, ino)
                self._link(txn, node, os.fsencode(e.name), child.ino)
                for k, v in e.xattrs.items():
                    txn.put(_U64.pack(child.ino) + b"\0" + os.fsencode(k), v, db=self._xattrs)
                if child.is_dir:
                    node.nlink += 1
            node.tree = None
            self.put(node, txn)

    def _from_entry(self, txn, e: Entry, dataset: str, parent: int) -> Inode:
        if e.link:  # another name of a file already expanded: the same inode
            known = txn.get(self._link_key(dataset, e.link), db=self._meta)
            if known is not None:
                raw = txn.get(known, db=self._inodes)
                if raw is not None:
                    return Inode.from_bytes(_U64.unpack(known)[0], raw)
        kind = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK}[e.kind]
        node = Inode(self._new_ino(txn), kind | (e.mode & 0o7777), self.uid, self.gid, atime_ns=e.mtime_ns,
                     mtime_ns=e.mtime_ns, ctime_ns=e.mtime_ns, dataset=dataset,
                     nlink=2 if e.kind == DIR else 1)
        if e.kind == FILE:
            node.size, node.chunks = e.size, list(e.chunks)
            if e.link:
                node.link, node.nlink = e.link, e.nlink
                txn.put(self._link_key(dataset, e.link), _U64.pack(node.ino), db=self._meta)
        elif e.kind == DIR:
            node.tree, node.parent = e.tree, parent
        else:
            node.target, node.size = e.target or "", len(os.fsencode(e.target or ""))
        self.put(node, txn)
        return node

    load_tree = None  # set by the owner: tree id -> Tree (cached, verified)

    @staticmethod
    def _link_key(dataset: str, link: int) -> bytes:
        return b"link/" + dataset.encode() + b"/" + _U64.pack(link)

    def create(self, parent: int, name: bytes, mode: int, *, target: str = "", dataset: str | None = None) -> Inode:
        """A new file, directory or symlink named ``name`` in ``parent``."""
        if len(name) > 255:
            raise FsError(errno.ENAMETOOLONG)
        self.expand(parent)
        now = time.time_ns()
        with self.env.begin(write=True) as txn:
            p = self.get(parent, txn)
            if not p.is_dir:
                raise FsError(errno.ENOTDIR)
            if txn.get(_dkey(parent, name), db=self._dirents) is not None:
                raise FsError(errno.EEXIST)
            ds = dataset if dataset is not None else p.dataset
            node = Inode(self._new_ino(txn), mode, self.uid, self.gid, atime_ns=now, mtime_ns=now, ctime_ns=now,
                         dataset=ds, nlink=2 if stat.S_ISDIR(mode) else 1, target=target,
                         size=len(os.fsencode(target)), parent=parent if stat.S_ISDIR(mode) else 0)
            self.put(node, txn)
            self._link(txn, p, name, node.ino)
            if node.is_dir:
                p.nlink += 1
            p.mtime_ns = p.ctime_ns = now
            self.put(p, txn)
        self.mark_dirty(node.dataset)
        return node

    def link(self, ino: int, parent: int, name: bytes) -> Inode:
        self.expand(parent)
        now = time.time_ns()
        with self.env.begin(write=True) as txn:
            node, p = self.get(ino, txn), self.get(parent, txn)
            if node.is_dir:
                raise FsError(errno.EPERM)
            if p.dataset != node.dataset or parent == ROOT:
                raise FsError(errno.EXDEV)
            if txn.get(_dkey(parent, name), db=self._dirents) is not None:
                raise FsError(errno.EEXIST)
            node.nlink += 1
            node.ctime_ns = now
            self.put(node, txn)
            self._link(txn, p, name, ino)
            p.mtime_ns = p.ctime_ns = now
            self.put(p, txn)
        self.mark_dirty(node.dataset)
        return node

    def remove(self, parent: int, name: bytes, *, is_dir: bool) -> Inode:
        """unlink/rmdir: the entry goes; the inode lives on while open or looked up (see :meth:`drop`)."""
        self.expand(parent)
        child = self.lookup(parent, name)
        self._check_removable(child, is_dir)
        now = time.time_ns()
        with self.env.begin(write=True) as txn:
            p = self.get(parent, txn)
            node = self.get(self._unlink(txn, parent, name), txn)
            node.nlink = 0 if node.is_dir else node.nlink - 1
            node.ctime_ns = now
            self.put(node, txn)
            if node.is_dir:
                p.nlink -= 1
            p.mtime_ns = p.ctime_ns = now
            self.put(p, txn)
        self.mark_dirty(node.dataset or p.dataset)
        return node

    def _check_removable(self, node: Inode, as_dir: bool) -> None:
        """unlink/rmdir, or replacement by rename with a file (``as_dir`` False) or a directory."""
        if as_dir:
            if not node.is_dir:
                raise FsError(errno.ENOTDIR)
            self.expand(node.ino)
            if next(self.entries(node.ino), None) is not None:
                raise FsError(errno.ENOTEMPTY)
        elif node.is_dir:
            raise FsError(errno.EISDIR)

    def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, *, noreplace: bool = False
               ) -> Inode | None:
        """Atomic rename; returns the inode that was replaced (now with one link less), if any."""
        self.expand(parent)
        self.expand(new_parent)
        node = self.lookup(parent, name)
        try:
            victim = self.lookup(new_parent, new_name)
        except FsError:
            victim = None
        if victim is not None:
            if noreplace:
                raise FsError(errno.EEXIST)
            if victim.ino == node.ino:
                return None
            self._check_removable(victim, node.is_dir)
        now = time.time_ns()
        with self.env.begin(write=True) as txn:
            src, dst = self.get(parent, txn), self.get(new_parent, txn)
            if node.is_dir and self._is_ancestor(txn, node.ino, new_parent):
                raise FsError(errno.EINVAL)
            if victim is not None:
                self._unlink(txn, new_parent, new_name)
                victim = self.get(victim.ino, txn)
                victim.nlink = 0 if victim.is_dir else victim.nlink - 1
                victim.ctime_ns = now
                self.put(victim, txn)
                if victim.is_dir:
                    dst.nlink -= 1
            self._unlink(txn, parent, name)
            if parent == new_parent:
                src = dst
            self._link(txn, dst, new_name, node.ino)
            if node.is_dir and parent != new_parent:
                src.nlink -= 1
                dst.nlink += 1
            src.mtime_ns = src.ctime_ns = dst.mtime_ns = dst.ctime_ns = now
            self.put(src, txn)
            if parent != new_parent:
                self.put(dst, txn)
            moved = self.get(node.ino, txn)
            moved.ctime_ns = now
            if moved.is_dir:
                moved.parent = new_parent
            self.put(moved, txn)
        self.mark_dirty(node.dataset)
        if dst.dataset != node.dataset:
            self.mark_dirty(dst.dataset)
        return victim

    def _is_ancestor(self, txn, ancestor: int, ino: int) -> bool:
        """Whether ``ancestor`` is ``ino`` or above it (renaming a dir into itself).

        Walks up the parent pointers: a few steps, whatever the size of the
        moved tree. Directories from an index without them fall back to a
        search down from ``ancestor``.
        """
        up = ino
        while up != ROOT:
            if up == ancestor:
                return True
            raw = txn.get(_U64.pack(up), db=self._inodes)
            parent = json.loads(raw).get("parent", 0) if raw is not None else 0
            if not parent:
                return self._is_ancestor_by_search(txn, ancestor, ino)
            up = parent
        return ancestor == ROOT

    def _is_ancestor_by_search(self, txn, ancestor: int, ino: int) -> bool:
        # Walk down from ancestor is expensive; walk the dirents up instead is not
        # indexed, so check by search from ancestor, bounded by the subtree size.
        stack = [ancestor]
        while stack:
            d = stack.pop()
            if d == ino:
                return True
            cur = txn.cursor(db=self._dirents)
            prefix = _U64.pack(d)
            if cur.set_range(prefix):
                for key, val in cur:
                    if not key.startswith(prefix):
                        break
                    child = _U64.unpack(val[:8])[0]
                    raw = txn.get(_U64.pack(child), db=self._inodes)
                    if raw is not None and stat.S_ISDIR(json.loads(raw)["mode"]):
                        stack.append(child)
        return False

    def drop(self, ino: int) -> bool:
        """Delete an inode that has no links left (the caller knows it is no longer open)."""
        with self.env.begin(write=True) as txn:
            raw = txn.get(_U64.pack(ino), db=self._inodes)
            if raw is None or ino == ROOT or Inode.from_bytes(ino, raw).nlink > 0:
                return False
            txn.delete(_U64.pack(ino), db=self._inodes)
            cur = txn.cursor(db=self._xattrs)
            prefix = _U64.pack(ino)
            while cur.set_range(prefix) and cur.key().startswith(prefix):
                cur.delete()
        return True

    def orphans(self) -> list[int]:
        """Inodes without links (left by a crash while they were open)."""
        with self.env.begin() as txn:
            return [_U64.unpack(k)[0] for k, v in txn.cursor(db=self._inodes)
                    if json.loads(v).get("nlink", 0) == 0 and _U64.unpack(k)[0] != ROOT]

    def staged(self) -> list[Inode]:
        """Inodes with a staging file (after a crash: content to flush before anything else)."""
        with self.env.begin() as txn:
            return [Inode.from_bytes(_U64.unpack(k)[0], v) for k, v in txn.cursor(db=self._inodes)
                    if b'"staged":true' in v]

    # ------------------------------------------------------------------ xattrs

    def getxattr(self, ino: int, name: bytes) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(_U64.pack(ino) + b"\0" + name, db=self._xattrs)

    def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        node = self.get(ino)
        with self.env.begin(write=True) as txn:
            txn.put(_U64.pack(ino) + b"\0" + name, value, db=self._xattrs)
        self.mark_dirty(node.dataset)

    def removexattr(self, ino: int, name: bytes) -> None:
        node = self.get(ino)
        with self.env.begin(write=True) as txn:
            if not txn.delete(_U64.pack(ino) + b"\0" + name, db=self._xattrs):
                raise FsError(errno.ENODATA)
        self.mark_dirty(node.dataset)

    def listxattr(self, ino: int) -> list[bytes]:
        prefix = _U64.pack(ino) + b"\0"
        with self.env.begin() as txn:
            cur = txn.cursor(db=self._xattrs)
            out = []
            if cur.set_range(prefix):
                for k, _ in cur:
                    if not k.startswith(prefix):
                        break
                    out.append(bytes(k[len(prefix):]))
            return out

    # ------------------------------------------------------------------ datasets

    def mark_dirty(self, dataset: str) -> None:
        # Every metadata change lands here: skip the write transaction when the flag is set already.
        if not dataset or dataset in self._dirty:
            return
        with self.env.begin(write=True) as txn:
            txn.put(b"dirty/" + dataset.encode(), b"1", db=self._meta)
        self._dirty.add(dataset)

    def dirty(self) -> list[str]:
        with self.env.begin() as txn:
            cur = txn.cursor(db=self._meta)
            out = []
            if cur.set_range(b"dirty/"):
                for k, _ in cur:
                    if not k.startswith(b"dirty/"):
                        break
                    out.append(bytes(k[6:]).decode())
            return out

    def base(self, dataset: str) -> str | None:
        with self.env.begin() as txn:
            raw = txn.get(b"base/" + dataset.encode(), db=self._meta)
            return raw.decode() if raw else None

    def set_base(self, dataset: str, snapshot: str | None, *, clean: bool) -> None:
        with self.env.begin(write=True) as txn:
            if snapshot:
                txn.put(b"base/" + dataset.encode(), snapshot.encode(), db=self._meta)
            else:
                txn.delete(b"base/" + dataset.encode(), db=self._meta)
            if clean:
                txn.delete(b"dirty/" + dataset.encode(), db=self._meta)
        if clean:
            self._dirty.discard(dataset)

    def dataset_dirs(self) -> dict[str, Inode]:
        return {name.decode(errors="surrogateescape"): node for _, name, node in self.entries(ROOT)}

    def attach_dataset(self, name: str, tree: str | None, mode: int = 0o755, mtime_ns: int = 0) -> Inode:
        """A dataset directory at the root, unexpanded on ``tree`` (or empty)."""
        if not NAME_RE.match(name):
            raise FsError(errno.EINVAL)
        node = self.create(ROOT, name.encode(), stat.S_IFDIR | (mode & 0o7777), dataset=name)
        if tree is not None:
            with self.env.begin(write=True) as txn:
                node = self.get(node.ino, txn)
                node.tree = tree
                if mtime_ns:
                    node.mtime_ns = node.ctime_ns = node.atime_ns = mtime_ns
                self.put(node, txn)
        return node

    def replace_dataset_tree(self, name: str, tree: str, mode: int | None = None, mtime_ns: int = 0) -> None:
        """Point a clean dataset directory at a new tree (another client committed)."""
        node = self.lookup(ROOT, name.encode())
        self._drop_subtree(node.ino)
        changes: dict = {"tree": tree, "nlink": 2, "cookie": 0}
        if mode is not None:
            changes["mode"] = stat.S_IFDIR | (mode & 0o7777)
        if mtime_ns:
            changes["mtime_ns"] = mtime_ns
        with self.env.begin(write=True) as txn:
            cur = txn.cursor(db=self._meta)
            prefix = b"link/" + name.encode() + b"/"
            while cur.set_range(prefix) and cur.key().startswith(prefix):
                cur.delete()
            n = self.get(node.ino, txn)
            for k, v in changes.items():
                setattr(n, k, v)
            self.put(n, txn)

    def _drop_subtree(self, ino: int) -> None:
        with self.env.begin(write=True) as txn:
            stack = [ino]
            while stack:
                d = stack.pop()
                prefix = _U64.pack(d)
                cur = txn.cursor(db=self._dirents)
                doomed = []
                if cur.set_range(prefix):
                    for key, val in cur:
                        if not key.startswith(prefix):
                            break
                        doomed.append((bytes(key), _U64.unpack(val[:8])[0], _U64.unpack(val[8:16])[0]))
                for key, child, cookie in doomed:
                    txn.delete(key, db=self._dirents)
                    txn.delete(_ckey(d, cookie), db=self._cookies)
                    raw = txn.get(_U64.pack(child), db=self._inodes)
                    if raw is None:
                        continue
                    c = Inode.from_bytes(child, raw)
                    c.nlink = 0 if c.is_dir else c.nlink - 1
                    if c.is_dir:
                        stack.append(child)
                    if c.nlink <= 0 and not c.staged:
                        txn.delete(_U64.pack(child), db=self._inodes)
                    else:
                        txn.put(_U64.pack(child), c.to_bytes(), db=self._inodes)

    # ------------------------------------------------------------------ commit

    def _link_id(self, node: Inode) -> int:
        """A random, persistent hard-link id for ``node`` (ids from other mounts never collide)."""
        if not node.link:
            link = int.from_bytes(os.urandom(8), "big") >> 1 or 1
            with self.env.begin(write=True) as txn:
                fresh = self.get(node.ino, txn)
                if not fresh.link:
                    fresh.link = link
                    self.put(fresh, txn)
                    txn.put(self._link_key(fresh.dataset, link), _U64.pack(fresh.ino), db=self._meta)
                node.link = fresh.link
        return node.link

    def tree_of(self, ino: int, put_tree, chunk_seen=None) -> tuple[str, int, int]:
        """Store the trees under directory ``ino`` bottom-up; (tree id, files, bytes).

        Unexpanded directories are reused by id without being read. Files
        must be flushed first (their chunk list is what gets committed);
        ``chunk_seen(id)`` hears of every chunk of a file that was read.
        """
        node = self.get(ino)
        if node.tree is not None:
            return node.tree, 0, 0
        entries: list[Entry] = []
        files = size = 0
        for _, name, child in list(self.entries(ino)):
            e = Entry(name=os.fsdecode(name), kind=DIR, mode=child.mode & 0o7777, mtime_ns=child.mtime_ns)
            if child.is_dir:
                e.tree, f, s = self.tree_of(child.ino, put_tree, chunk_seen)
                files, size = files + f, size + s
            elif child.is_file:
                if child.unflushed:
                    raise FsError(errno.EAGAIN)  # the caller flushes first
                e.kind, e.size, e.chunks = FILE, child.size, list(child.chunks)
                if chunk_seen is not None:
                    for cid, _ in child.chunks:
                        chunk_seen(cid)
                files, size = files + 1, size + child.size
                if child.nlink > 1:
                    e.link, e.nlink = self._link_id(child), child.nlink
            elif stat.S_ISLNK(child.mode):
                e.kind, e.target = SYMLINK, child.target
            else:
                continue  # sockets, fifos, devices live only in the mount
            e.xattrs = {os.fsdecode(k): self.getxattr(child.ino, k) or b"" for k in self.listxattr(child.ino)}
            entries.append(e)
        return put_tree(Tree(entries)), files, size
