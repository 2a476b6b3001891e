"""Three-way merge of trees, for commits that raced with another client.

When the ref moved from ``base`` to ``theirs`` while we built ``ours``, the
result keeps both sides' changes where they touch different paths. Where
both changed the same path differently, there is no merge: the caller keeps
its snapshot and reports the conflict instead of picking a winner.
"""

from __future__ import annotations

from typing import Callable

from .objects import DIR, Entry, Tree


class MergeConflict(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def merge_trees(base: str | None, ours: str, theirs: str, get_tree: Callable[[str], Tree],
                put_tree: Callable[[Tree], str], path: str = "") -> str:
    """The id of a tree holding both sides' changes relative to ``base``."""
    if ours == theirs or theirs == base:
        return ours
    if ours == base:
        return theirs
    b = {e.name: e for e in get_tree(base).entries} if base else {}
    o = {e.name: e for e in get_tree(ours).entries}
    t = {e.name: e for e in get_tree(theirs).entries}
    merged: list[Entry] = []
    for name in sorted(set(b) | set(o) | set(t)):
        be, oe, te = b.get(name), o.get(name), t.get(name)
        sub = f"{path}/{name}"
        if _same(oe, te) or _same(te, be):
            pick = oe
        elif _same(oe, be):
            pick = te
        elif oe is not None and te is not None and oe.kind == DIR and te.kind == DIR:
            base_tree = be.tree if be is not None and be.kind == DIR else None
            tid = merge_trees(base_tree, oe.tree or "", te.tree or "", get_tree, put_tree, sub)
            pick = Entry(name=name, kind=DIR, mode=oe.mode, mtime_ns=max(oe.mtime_ns, te.mtime_ns), tree=tid)
        else:
            raise MergeConflict(sub)
        if pick is not None:
            merged.append(pick)
    return put_tree(Tree(merged))


def _same(a: Entry | None, b: Entry | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.to_doc() == b.to_doc()
