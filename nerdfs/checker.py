"""Checker: is everything reachable from the refs present and intact?

Walks every dataset's history (snapshots → trees → chunks) once, compares
the chunk ids with one listing of the store and, with ``read_data``,
downloads and verifies every chunk. Reports problems instead of stopping at
the first, so one run says everything that is wrong.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .datasets import Datasets
from .errors import NerdError
from .objects import DIR, FILE
from .progress import ProgressCallback, Tracker
from .repo import CHUNK, Repository


@dataclass
class CheckReport:
    datasets: int = 0
    snapshots: int = 0
    trees: int = 0
    chunks: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Checker:
    def __init__(self, repo: Repository, *, threads: int = 8, progress: ProgressCallback | None = None) -> None:
        self.repo = repo
        self.threads = threads
        self.progress = progress

    def check(self, read_data: bool = False) -> CheckReport:
        report = CheckReport()
        chunks: dict[str, int] = {}
        seen_snaps: set[str] = set()
        seen_trees: set[str] = set()
        datasets = Datasets(self.repo)
        for name in datasets.names():
            report.datasets += 1
            try:
                for sid, snap in datasets.log(name):
                    if sid in seen_snaps:
                        break  # shared history already walked
                    seen_snaps.add(sid)
                    self._walk(snap.tree, seen_trees, chunks, report, f"{name}@{sid[:12]}")
            except NerdError as e:
                report.problems.append(f"dataset {name}: {e}")
        report.snapshots, report.trees = len(seen_snaps), len(seen_trees)
        report.chunks, report.bytes = len(chunks), sum(chunks.values())
        stored = {key.rsplit("/", 1)[-1] for key in self.repo.store.list(f"{CHUNK}/")}
        missing = sorted(set(chunks) - stored)
        report.problems += [f"chunk {cid} is missing from the store" for cid in missing]
        if read_data:
            self._read_all([c for c in chunks if c in stored], chunks, report)
        return report

    def _walk(self, tid: str, seen: set[str], chunks: dict[str, int], report: CheckReport, where: str) -> None:
        stack = [tid]
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            try:
                tree = self.repo.get_tree(t)
            except NerdError as e:
                report.problems.append(f"{where}: {e}")
                continue
            for e in tree.entries:
                if e.kind == DIR and e.tree:
                    stack.append(e.tree)
                elif e.kind == FILE:
                    for cid, n in e.chunks:
                        chunks[cid] = n

    def _read_all(self, ids: list[str], sizes: dict[str, int], report: CheckReport) -> None:
        tracker = Tracker("check", self.progress, files_total=len(ids), bytes_total=sum(sizes[c] for c in ids))

        def verify(cid: str) -> str | None:
            try:
                self.repo.get(CHUNK, cid, cache=False)
                return None
            except NerdError as e:
                return str(e)
            finally:
                tracker.add(files=1, nbytes=sizes[cid])

        with ThreadPoolExecutor(self.threads) as pool:
            report.problems += [p for p in pool.map(verify, ids) if p]
        tracker.finish()
