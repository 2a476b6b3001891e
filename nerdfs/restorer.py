"""Restorer: a snapshot's tree → a local directory.

Every file is assembled under a temporary name in its final directory,
flushed to disk, and only then renamed into place, so an interrupted or
failed download never leaves a partial file under a real name. Chunks are
fetched by a bounded pool of worker threads, verified, and written with
``pwrite`` at their offsets, so order does not matter.
"""

from __future__ import annotations

import itertools
import os
import random
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import IntegrityError, UsageError
from .objects import DIR, FILE, Entry, check_name
from .progress import ProgressCallback, Tracker
from .repo import CHUNK, Repository
from .workers import Workers


@dataclass
class RestoreStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes_total: int = 0
    bytes_fetched: int = 0  # plain chunk bytes fetched from the store or cache


def _temp_name(final: Path) -> Path:
    """A hidden name beside ``final``; O_EXCL (or symlink) refuses the rare collision."""
    return final.with_name(f".nerd-part-{os.getpid()}-{next(_seq)}-{random.getrandbits(32):08x}")


_seq = itertools.count()


class _OpenFile:
    """A file being assembled: its temp path, fd, and how many chunks are still due.

    Opened by the first chunk that arrives, in a worker thread, so creating
    thousands of small files runs in parallel rather than in the scheduler.
    """

    def __init__(self, final: Path, entry: Entry) -> None:
        self.final = final
        self.entry = entry
        self.tmp = _temp_name(final)
        self.fd = -1
        self.pending = len(entry.chunks)
        self.lock = threading.Lock()

    def open(self) -> int:
        with self.lock:
            if self.fd < 0:
                self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                os.ftruncate(self.fd, self.entry.size)
            return self.fd


class Restorer:
    def __init__(self, repo: Repository, *, threads: int = 8, progress: ProgressCallback | None = None,
                 use_cache: bool = True) -> None:
        self.repo = repo
        self.threads = threads
        self.progress = progress
        self.use_cache = use_cache

    def restore(self, tree_id: str, target: str | os.PathLike, *, force: bool = False) -> RestoreStats:
        target = Path(target).absolute()
        self._prepare_target(target, force)
        stats = RestoreStats()
        plan = self._plan(tree_id, target, stats)
        tracker = Tracker("download", self.progress, files_total=stats.files, bytes_total=stats.bytes_total)
        self._make_dirs(plan["dirs"], force)
        try:
            self._fetch_files(plan["files"], stats, tracker, force)
        except BaseException:
            for p in target.rglob(".nerd-part-*"):
                try:
                    p.unlink()
                except OSError:
                    pass
            raise
        for path, entry in plan["symlinks"]:
            self._place_symlink(path, entry, force)
        # Directory modes and times last, deepest first: writing into them changed both.
        for path, entry in reversed(plan["dirs"][1:]):  # the target itself stays as the user made it
            os.chmod(path, entry.mode)
            os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))
        tracker.finish()
        return stats

    # ------------------------------------------------------------------ plan

    def _prepare_target(self, target: Path, force: bool) -> None:
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise UsageError(f"target {target} exists and is not a directory")
        if target.exists() and any(target.iterdir()) and not force:
            raise UsageError(f"target {target} is not empty — choose an empty directory or pass --force")
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create target {target}: {e.strerror}") from None

    def _plan(self, tree_id: str, target: Path, stats: RestoreStats) -> dict[str, list]:
        """Walk the trees: which directories, files and symlinks go where."""
        root = Entry(name=".", kind=DIR, mode=0o755, tree=tree_id)
        plan: dict[str, list] = {"dirs": [(target, root)], "files": [], "symlinks": []}
        stack = [(target, tree_id)]
        while stack:
            path, tid = stack.pop()
            for e in self.repo.get_tree(tid).entries:
                check_name(e.name)  # also checked on decode: never trust a path from the store
                dest = path / e.name
                if e.kind == DIR:
                    plan["dirs"].append((dest, e))
                    stack.append((dest, e.tree))
                    stats.dirs += 1
                elif e.kind == FILE:
                    plan["files"].append((dest, e))
                    stats.files += 1
                    stats.bytes_total += e.size
                else:
                    plan["symlinks"].append((dest, e))
                    stats.symlinks += 1
        plan["dirs"].sort(key=lambda d: len(d[0].parts))
        return plan

    def _make_dirs(self, dirs: list[tuple[Path, Entry]], force: bool) -> None:
        for path, _ in dirs[1:]:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o700)
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            # A file or a symlink where the snapshot has a directory: never
            # write through it (a symlink could point anywhere).
            if not force:
                raise UsageError(f"{path} exists and is not a directory — pass --force to replace it")
            os.unlink(path)
            os.mkdir(path, 0o700)

    # ------------------------------------------------------------------ files

    def _fetch_files(self, files: list[tuple[Path, Entry]], stats: RestoreStats, tracker: Tracker,
                     force: bool) -> None:
        lock = threading.Lock()
        opened: list[_OpenFile] = []

        def fetch(of: _OpenFile, cid: str, offset: int, length: int) -> None:
            try:
                # Read the cache, don't fill it: a download already writes every byte once.
                data = self.repo.get(CHUNK, cid, cache=self.use_cache, keep=False)
            except IntegrityError as e:
                raise IntegrityError(f"{e} (needed by {of.final}; nothing was written under its name)") from None
            if len(data) != length:
                raise IntegrityError(f"chunk {cid} of {of.final} has length {len(data)}, the tree says {length}")
            os.pwrite(of.open(), data, offset)
            with lock:
                stats.bytes_fetched += length
            tracker.add(nbytes=length)
            with of.lock:
                of.pending -= 1
                last = of.pending == 0
            if last:
                self._finish_file(of, force)
                tracker.add(files=1)

        try:
            with Workers(self.threads, self.threads * 4, "nerd-get") as workers:
                for dest, entry in files:
                    if workers.failed:
                        break
                    of = _OpenFile(dest, entry)
                    opened.append(of)
                    if not entry.chunks:
                        of.open()
                        self._finish_file(of, force)
                        tracker.add(files=1)
                        continue
                    offset = 0
                    for cid, length in entry.chunks:
                        if not workers.submit(fetch, of, cid, offset, length):
                            break
                        offset += length
        finally:
            for of in opened:
                if of.pending and of.fd >= 0:  # never finished: close it, the caller removes the temp file
                    os.close(of.fd)

    def _finish_file(self, of: _OpenFile, force: bool) -> None:
        try:
            os.fchmod(of.fd, of.entry.mode)
            os.utime(of.fd, ns=(of.entry.mtime_ns, of.entry.mtime_ns))
            os.fdatasync(of.fd)
        finally:
            os.close(of.fd)
        self._replace(of.tmp, of.final, force)

    def _place_symlink(self, path: Path, entry: Entry, force: bool) -> None:
        tmp = _temp_name(path)
        os.symlink(entry.target or "", tmp)
        os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
        self._replace(tmp, path, force)

    @staticmethod
    def _replace(tmp: Path, final: Path, force: bool) -> None:
        """Rename into place; over an existing directory only with --force (and only if empty)."""
        try:
            if os.path.isdir(final) and not os.path.islink(final):
                if not force:
                    raise UsageError(f"{final} exists and is a directory — pass --force to replace it")
                os.rmdir(final)
            os.rename(tmp, final)
        except OSError as e:
            os.unlink(tmp)
            raise UsageError(f"cannot place {final}: {e.strerror}") from None
        except UsageError:
            os.unlink(tmp)
            raise
