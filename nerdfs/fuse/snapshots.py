"""``MNT/.snapshots/<dataset>/<snapshot-id>/…``: read-only history, straight from the store.

Nothing here is persistent: virtual inodes (numbered from :data:`FIRST`,
far above the workspace's) are made on lookup and name store objects
(snapshots and trees), which never change. The directory is hidden from
``ls MNT`` (as ZFS hides ``.zfs``) so that ``du`` or ``rsync`` of the mount
do not walk all of history, but ``cd MNT/.snapshots`` works.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass, field

from ..datasets import Datasets
from ..objects import DIR, FILE
from ..repo import Repository
from ..workspace import FileKind, FsError

NAME = b".snapshots"
FIRST = 1 << 62


@dataclass
class VNode(FileKind):
    ino: int
    mode: int
    mtime_ns: int = 0
    size: int = 0
    chunks: list[tuple[str, int]] = field(default_factory=list)
    target: str = ""
    tree: str | None = None  # directory backed by a tree
    dataset: str | None = None  # a dataset's directory of snapshots
    children: dict[bytes, int] | None = None
    uid: int = 0
    gid: int = 0
    staged: bool = False

    @property
    def nlink(self) -> int:
        return 2 if stat.S_ISDIR(self.mode) else 1

    @property
    def atime_ns(self) -> int:
        return self.mtime_ns

    @property
    def ctime_ns(self) -> int:
        return self.mtime_ns



class SnapshotView:
    def __init__(self, repo: Repository, uid: int, gid: int) -> None:
        self.repo = repo
        self.datasets = Datasets(repo)
        self.uid, self.gid = uid, gid
        self.nodes: dict[int, VNode] = {}
        self._next = FIRST
        self._snapshots: dict[str, int] = {}  # snapshot id -> its directory
        self.root = self._node(stat.S_IFDIR | 0o555)

    @staticmethod
    def owns(ino: int) -> bool:
        return ino >= FIRST

    def _node(self, mode: int, **kw) -> VNode:
        node = VNode(self._next, mode, uid=self.uid, gid=self.gid, **kw)
        self.nodes[node.ino] = node
        self._next += 1
        return node

    def get(self, ino: int) -> VNode:
        try:
            return self.nodes[ino]
        except KeyError:
            raise FsError(errno.ESTALE) from None

    def children(self, ino: int) -> dict[bytes, int]:
        """Name → inode of a virtual directory (blocking: may read the store)."""
        node = self.get(ino)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        if node is self.root:
            # Always fresh: new datasets appear without a remount.
            node.children = {name.encode(): self._dataset_dir(name) for name in self.datasets.names()}
        elif node.dataset is not None:
            node.children = {sid.encode(): self._snapshot_dir(sid, snap)
                             for sid, snap in self.datasets.log(node.dataset)}
        elif node.children is None:
            node.children = {}
            for e in self.repo.get_tree(node.tree).entries:
                kind = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR}.get(e.kind, stat.S_IFLNK)
                perm = (e.mode & 0o7777) & ~0o222 if e.kind != "symlink" else 0o777
                child = self._node(kind | perm, mtime_ns=e.mtime_ns, size=e.size, chunks=list(e.chunks),
                                   target=e.target or "", tree=e.tree)
                if e.kind == "symlink":
                    child.size = len((e.target or "").encode("utf-8", "surrogateescape"))
                node.children[e.name.encode("utf-8", "surrogateescape")] = child.ino
        return node.children

    def _dataset_dir(self, name: str) -> int:
        old = (self.root.children or {}).get(name.encode())
        if old is not None:
            return old
        return self._node(stat.S_IFDIR | 0o555, dataset=name).ino

    def _snapshot_dir(self, sid: str, snap) -> int:
        if sid not in self._snapshots:
            self._snapshots[sid] = self._node(stat.S_IFDIR | 0o555, tree=snap.tree, mtime_ns=0).ino
        return self._snapshots[sid]

    def lookup(self, parent: int, name: bytes) -> VNode:
        if name == b"..":
            raise FsError(errno.ENOENT)
        ino = self.children(parent).get(name)
        if ino is None:
            raise FsError(errno.ENOENT)
        return self.nodes[ino]
