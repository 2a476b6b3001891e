"""Upload a directory as a dataset snapshot, or download one, in one call.

    from nerdcli.service import datatransfer
    up = datatransfer.upload("results/", name="results", message="run 42")
    print(up.snapshot, up.bytes_uploaded)
    datatransfer.download("results@" + up.snapshot[:8], "/tmp/results")

Progress is reported through ``progress(Progress)``; warnings (skipped
special files, files changed while read) through ``warn(str)``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from nerdfs import (Archiver, Datasets, ProgressCallback, Repository, Restorer, UsageError,
                    check_dataset_name)

from ..config import Config


@dataclass
class UploadResult:
    dataset: str
    snapshot: str
    parent: str | None
    changed: bool  # False: the directory equals the dataset's head, no new snapshot
    files: int
    bytes_total: int
    bytes_uploaded: int  # chunk bytes actually sent to the store (after dedup and compression)
    bytes_new: int  # plain bytes of chunks the store did not have
    chunks_total: int
    chunks_new: int
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DownloadResult:
    dataset: str
    snapshot: str
    path: str
    files: int
    dirs: int
    symlinks: int
    bytes_total: int
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def open_repository(config: Config | None = None) -> Repository:
    """The repository the config points at (created on first use)."""
    cfg = config or Config.load()
    ds = cfg.datasets
    return Repository.open(ds.store_url(), s3=ds.s3, cache_dir=ds.cache_path(), cache_size=ds.cache_size)


def default_name(src: str | os.PathLike) -> str:
    """A dataset name from a directory name: ``~/data/My Genomes`` → ``My-Genomes``."""
    base = Path(src).absolute().resolve().name
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in base).lstrip("._-")
    if not name:
        raise UsageError(f"cannot derive a dataset name from {src!r} — pass --name")
    return check_dataset_name(name[:128])


def upload(src: str | os.PathLike, name: str | None = None, *, message: str = "", config: Config | None = None,
           progress: ProgressCallback | None = None, warn: Callable[[str], None] | None = None,
           repo: Repository | None = None) -> UploadResult:
    """Make dataset ``name`` hold the contents of directory ``src`` (a new snapshot if anything changed)."""
    name = check_dataset_name(name) if name else default_name(src)
    started = time.monotonic()
    cfg = config or Config.load()
    own = repo is None
    repo = repo or open_repository(cfg)
    try:
        datasets = Datasets(repo)
        head = datasets.head(name)
        tree, stats = Archiver(repo, threads=cfg.datasets.threads, progress=progress, warn=warn).archive(src)
        parent = head.snapshot if head else None
        current = repo.get_snapshot(head.snapshot) if head else None
        if head is not None and current is not None and current.tree == tree:
            sid, parent, changed = head.snapshot, current.parent, False
        else:
            sid, _ = datasets.commit(name, tree, parent=parent, message=message, files=stats.files,
                                     size=stats.bytes_total)
            changed = True
        return UploadResult(
            dataset=name, snapshot=sid, parent=parent, changed=changed, files=stats.files,
            bytes_total=stats.bytes_total, bytes_uploaded=stats.bytes_uploaded, bytes_new=stats.bytes_new,
            chunks_total=stats.chunks_total, chunks_new=stats.chunks_new, skipped=stats.skipped,
            seconds=round(time.monotonic() - started, 3),
        )
    finally:
        if own:
            repo.close()


def download(spec: str, dest: str | os.PathLike, *, force: bool = False, config: Config | None = None,
             progress: ProgressCallback | None = None, repo: Repository | None = None) -> DownloadResult:
    """Restore ``NAME`` or ``NAME@SNAPSHOT`` into directory ``dest``."""
    started = time.monotonic()
    cfg = config or Config.load()
    own = repo is None
    repo = repo or open_repository(cfg)
    try:
        name, sid, snap = Datasets(repo).resolve(spec)
        stats = Restorer(repo, threads=cfg.datasets.threads, progress=progress).restore(snap.tree, dest, force=force)
        return DownloadResult(dataset=name, snapshot=sid, path=str(Path(dest).absolute()), files=stats.files,
                              dirs=stats.dirs, symlinks=stats.symlinks, bytes_total=stats.bytes_total,
                              seconds=round(time.monotonic() - started, 3))
    finally:
        if own:
            repo.close()


__all__ = ["upload", "download", "UploadResult", "DownloadResult", "open_repository", "default_name"]
