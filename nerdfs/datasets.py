"""Datasets: named, mutable refs to immutable snapshots.

``refs/<name>`` holds the head snapshot id and a generation counter and is
only ever changed by compare-and-swap. A commit writes its snapshot first
(so it is never lost), then moves the ref. If another client moved the ref
in between, the commit is re-based on top of theirs when the two change sets
touch different paths, and otherwise reported as a :class:`CommitConflict`
that names the saved snapshot.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator

from .errors import Conflict, IntegrityError, NotFound, RefConflict, UsageError
from .merge import MergeConflict, merge_trees
from .objects import Snapshot
from .repo import SNAPSHOT, Repository

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX_RE = re.compile(r"^[0-9a-f]{4,64}$")


def check_dataset_name(name: str) -> str:
    """Dataset names are directory names in the mount: no slashes, no leading dot."""
    if not NAME_RE.match(name or ""):
        raise UsageError(
            f"invalid dataset name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Head:
    snapshot: str
    generation: int
    version: str  # the store's version token, for compare-and-swap


class CommitConflict(Conflict):
    def __init__(self, dataset: str, snapshot: str, head: str, path: str) -> None:
        self.dataset, self.snapshot, self.head, self.path = dataset, snapshot, head, path
        super().__init__(
            f"dataset {dataset}: changed by another client while committing ({path} changed on both sides); "
            f"your version is saved as snapshot {snapshot}, the head stays at {head[:12]}"
        )


class Datasets:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.store = repo.store

    def head(self, name: str) -> Head | None:
        check_dataset_name(name)
        found = self.store.get_versioned(f"refs/{name}")
        if found is None:
            return None
        data, version = found
        try:
            doc = json.loads(data)
            return Head(str(doc["snapshot"]), int(doc["generation"]), version)
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(f"store {self.repo.url}: refs/{name} is malformed") from None

    def names(self) -> list[str]:
        return sorted(k[len("refs/"):] for k in self.store.list("refs/") if NAME_RE.match(k[len("refs/"):]))

    def commit(self, name: str, tree: str, *, parent: str | None, message: str = "", files: int = 0,
               size: int = 0, root: tuple[int, int] = (0o755, 0), max_attempts: int = 20) -> tuple[str, Snapshot]:
        """Make ``tree`` the new head of ``name``; ``parent`` is the head the tree was built on.

        Returns the id and the snapshot that became the head (a merge, if the
        ref moved meanwhile). ``root`` is the dataset directory's (mode, mtime_ns).
        """
        check_dataset_name(name)
        base_tree = self.repo.get_snapshot(parent).tree if parent else None
        snap = self._snapshot(name, tree, parent, message, files, size, root)
        sid = self.repo.put_snapshot(snap)
        for _ in range(max_attempts):
            head = self.head(name)
            current = head.snapshot if head else None
            if current == sid:
                # Our ref write landed; only its answer was lost and the retry saw itself.
                return sid, snap
            if current != snap.parent:
                # Someone else committed: re-base our change on theirs.
                theirs = self.repo.get_snapshot(current).tree if current else None
                try:
                    merged = tree if theirs is None else merge_trees(
                        base_tree, tree, theirs, self.repo.get_tree, lambda t: self.repo.put_tree(t)[0])
                except MergeConflict as c:
                    raise CommitConflict(name, sid, current or "(deleted)", c.path) from None
                snap = self._snapshot(name, merged, current, message, files, size, root)
                sid = self.repo.put_snapshot(snap)
                # Our change now sits on top of theirs: if the ref moves again,
                # the next merge is merged-vs-theirs, not the original tree.
                tree, base_tree = merged, theirs
            ref = json.dumps({"snapshot": sid, "generation": (head.generation + 1) if head else 1}).encode()
            try:
                self.store.put_if(f"refs/{name}", ref, head.version if head else None)
                return sid, snap
            except RefConflict:
                continue
        raise Conflict(f"dataset {name}: too many concurrent commits; your version is saved as snapshot {sid}")

    def _snapshot(self, name: str, tree: str, parent: str | None, message: str, files: int, size: int,
                  root: tuple[int, int]) -> Snapshot:
        now = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
        return Snapshot(dataset=name, tree=tree, parent=parent, time=now, host=socket.gethostname(),
                        message=message, files=files, bytes=size, root_mode=root[0], root_mtime_ns=root[1])

    def log(self, name: str, limit: int | None = None) -> Iterator[tuple[str, Snapshot]]:
        """Snapshots from the head back through their parents."""
        head = self.head(name)
        if head is None:
            raise NotFound(f"no dataset named {name!r} — see `nerd dataset list`")
        sid: str | None = head.snapshot
        n = 0
        while sid and (limit is None or n < limit):
            snap = self.repo.get_snapshot(sid)
            yield sid, snap
            sid, n = snap.parent, n + 1

    def resolve(self, spec: str) -> tuple[str, str, Snapshot]:
        """``NAME`` or ``NAME@SNAPSHOT`` (a full id or a unique prefix of one in its log)."""
        name, _, want = spec.partition("@")
        check_dataset_name(name)
        if not want:
            head = self.head(name)
            if head is None:
                raise NotFound(f"no dataset named {name!r} — see `nerd dataset list`")
            return name, head.snapshot, self.repo.get_snapshot(head.snapshot)
        want = want.lower()
        if not _HEX_RE.match(want):
            raise UsageError(f"invalid snapshot id {want!r}: use at least 4 hex digits of an id from `nerd dataset log {name}`")
        if len(want) == 64 and self.repo.has(SNAPSHOT, want):
            snap = self.repo.get_snapshot(want)
            if snap.dataset == name:
                return name, want, snap
        matches = [(sid, s) for sid, s in self.log(name) if sid.startswith(want)]
        if not matches:
            raise NotFound(f"dataset {name} has no snapshot {want} — see `nerd dataset log {name}`")
        if len(matches) > 1:
            raise UsageError(f"snapshot prefix {want} of dataset {name} is ambiguous — give more digits")
        return name, *matches[0]

    def delete(self, name: str) -> str:
        """Remove the dataset's ref (its objects stay in the store); returns the last head."""
        head = self.head(name)
        if head is None:
            raise NotFound(f"no dataset named {name!r} — see `nerd dataset list`")
        self.store.delete(f"refs/{name}")
        return head.snapshot
