"""Archiver: a local directory → chunks and trees in the store (restic's pipeline).

scan (walk, stat, totals) → chunk + hash (this thread; FastCDC and BLAKE3
release the GIL) → compress + PUT (bounded :class:`~nerdfs.workers.Workers`) → trees,
bottom-up. Only chunks the store does not already hold are sent. Everything
blocks: async callers run :meth:`Archiver.archive` in a thread.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import NotFound, UsageError
from .index import FileStat
from .objects import DIR, FILE, SYMLINK, Entry, Tree, mode_kind
from .progress import ProgressCallback, Tracker
from .repo import CHUNK, Repository, object_key
from .workers import Workers

log = logging.getLogger(__name__)


@dataclass
class ArchiveStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes_total: int = 0  # plain bytes of all files
    bytes_new: int = 0  # plain bytes of chunks the store did not have
    bytes_uploaded: int = 0  # bytes actually sent for chunks (after compression)
    chunks_total: int = 0
    chunks_new: int = 0
    skipped: list[str] = field(default_factory=list)


@dataclass
class _Node:
    path: Path
    rel: str
    st: os.stat_result
    kind: str
    children: list["_Node"] = field(default_factory=list)
    target: str | None = None
    chunks: list[tuple[str, int]] = field(default_factory=list)


class Archiver:
    def __init__(self, repo: Repository, *, threads: int = 8, progress: ProgressCallback | None = None,
                 warn: Callable[[str], None] | None = None, max_in_flight: int = 128 << 20) -> None:
        self.repo = repo
        self.threads = threads
        self.progress = progress
        self.warn = warn or (lambda msg: log.warning("%s", msg))
        self.max_in_flight = max_in_flight

    # ------------------------------------------------------------------ scan

    def _scan(self, src: Path) -> tuple[_Node, list[_Node], ArchiveStats]:
        try:
            st = src.stat()
        except FileNotFoundError:
            raise NotFound(f"source {src} does not exist") from None
        except OSError as e:
            raise UsageError(f"cannot read source {src}: {e.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"source {src} is not a directory — upload takes a directory")
        stats = ArchiveStats()
        files: list[_Node] = []
        tracker = Tracker("scan", self.progress)
        root = _Node(src, ".", st, DIR)
        stack = [root]
        while stack:
            node = stack.pop()
            stats.dirs += 1
            try:
                with os.scandir(node.path) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                raise UsageError(f"cannot read directory {node.path}: {e.strerror} — fix its permissions") from None
            for de in entries:
                path = Path(de.path)
                rel = de.name if node.rel == "." else f"{node.rel}/{de.name}"
                try:
                    est = de.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # vanished while we looked: it is not part of this upload
                kind = mode_kind(est.st_mode)
                if kind is None:
                    self.warn(f"skipping special file {path} (not a regular file, directory or symlink)")
                    stats.skipped.append(rel)
                    continue
                child = _Node(path, rel, est, kind)
                if kind == SYMLINK:
                    child.target = os.readlink(path)
                    stats.symlinks += 1
                elif kind == FILE:
                    if not os.access(path, os.R_OK):
                        raise UsageError(f"cannot read file {path}: permission denied — fix its permissions")
                    files.append(child)
                    stats.files += 1
                    stats.bytes_total += est.st_size
                    tracker.add(files=1, nbytes=est.st_size)
                else:
                    stack.append(child)
                node.children.append(child)
        tracker.finish()
        return root, files, stats

    # ------------------------------------------------------------------ chunks

    def archive(self, src: str | os.PathLike) -> tuple[str, ArchiveStats]:
        """Store the directory ``src``; returns its root tree id and the figures."""
        root, files, stats = self._scan(Path(src).absolute())
        self.repo.refresh_known()
        tracker = Tracker("upload", self.progress, files_total=stats.files, bytes_total=stats.bytes_total)
        repo = self.repo
        scheduled: set[str] = set()  # chunk ids handed to the workers in this run
        lock = threading.Lock()
        new_files: list[tuple[str, FileStat, list[tuple[str, int]]]] = []

        def send(cid: str, data: memoryview) -> None:
            sent = repo.put(CHUNK, cid, data)
            if sent:
                with lock:
                    stats.chunks_new += 1
                    stats.bytes_new += len(data)
                    stats.bytes_uploaded += sent
            tracker.add(sent=sent)

        in_flight = max(1, self.max_in_flight // repo.config.chunker.max_size)
        small = stats.bytes_total <= 4 * repo.config.chunker.max_size  # a task's output, a config dir
        with Workers(0 if small else self.threads, in_flight, "nerd-put") as workers:
            for node in files:
                if workers.failed:
                    break
                fst = FileStat.of(node.st)
                cached = repo.index.file_chunks(repo.id, str(node.path), fst)
                if cached is not None and len(repo.index.known_many(
                        repo.id, [object_key(CHUNK, c) for c, _ in cached])) == len({c for c, _ in cached}):
                    node.chunks = cached
                    stats.chunks_total += len(cached)
                    tracker.add(files=1, nbytes=fst.size)
                    continue
                node.chunks, node.st, stable = self._chunk_file(node, scheduled, workers, send, tracker)
                stats.chunks_total += len(node.chunks)
                if stable:
                    new_files.append((str(node.path), FileStat.of(node.st), node.chunks))
                tracker.add(files=1)
        repo.flush()  # before the scan cache: it may only name chunks the index knows
        repo.index.put_files(repo.id, new_files)
        root_tree = self._store_trees(root)
        tracker.finish()
        return root_tree, stats

    def _chunk_file(self, node: _Node, scheduled: set[str], workers: Workers, send: Callable,
                    tracker: Tracker) -> tuple[list[tuple[str, int]], os.stat_result, bool]:
        """Cut one file and schedule its unknown chunks; re-reads once if it changed meanwhile.

        Returns the chunk list, the file's stat after reading, and whether it
        held still (only then may the scan cache trust it next time).
        """
        repo = self.repo
        for attempt in (1, 2):
            chunks: list[tuple[str, int]] = []
            try:
                with open(node.path, "rb") as f:
                    before = os.fstat(f.fileno())
                    for piece in repo.chunker.cut_file(f):
                        chunks.append((piece.id, piece.length))
                        tracker.add(nbytes=piece.length)
                        if piece.id in scheduled or repo.knows(object_key(CHUNK, piece.id)):
                            continue
                        scheduled.add(piece.id)
                        if not workers.submit(send, piece.id, piece.data):
                            return chunks, os.fstat(f.fileno()), False  # the upload is failing anyway
                    after = os.fstat(f.fileno())
            except FileNotFoundError:
                raise NotFound(f"file {node.path} vanished during the upload — run the upload again") from None
            except OSError as e:
                hint = " (is the disk failing?)" if e.errno == errno.EIO else ""
                raise UsageError(f"cannot read file {node.path}: {e.strerror}{hint}") from None
            if before.st_size == after.st_size == sum(n for _, n in chunks) and \
                    before.st_mtime_ns == after.st_mtime_ns:
                return chunks, after, True
            if attempt == 1:
                tracker.add(nbytes=-sum(n for _, n in chunks))
        self.warn(f"file {node.path} changed while it was read; uploaded the bytes as read")
        return chunks, after, False

    # ------------------------------------------------------------------ trees

    def _store_trees(self, root: _Node) -> str:
        """Trees bottom-up (post-order), so a tree is stored only after its subtrees."""
        order: list[_Node] = []
        stack = [root]
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(c for c in node.children if c.kind == DIR)
        ids: dict[int, str] = {}
        for node in reversed(order):
            entries = []
            for c in node.children:
                mode = stat.S_IMODE(c.st.st_mode)
                e = Entry(name=os.fsdecode(c.path.name), kind=c.kind, mode=mode, mtime_ns=c.st.st_mtime_ns)
                if c.kind == FILE:
                    e.chunks, e.size = c.chunks, sum(n for _, n in c.chunks)
                elif c.kind == DIR:
                    e.tree = ids[id(c)]
                else:
                    e.target = c.target
                entries.append(e)
            ids[id(node)], _ = self.repo.put_tree(Tree(entries))
        return ids[id(root)]
