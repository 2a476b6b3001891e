"""``nerd run``'s arguments → a :class:`JobSpec` whose inputs are pinned to snapshots.

An input ``SRC[:DEST]`` is, in this order:

- a path inside a nerdfs mount: the mount commits the dataset (``sync``) and
  the job gets that snapshot and the subpath (``MNT/.snapshots/DS/ID/…`` pins
  an existing snapshot without a commit);
- an existing local directory: uploaded as a new snapshot of the dataset
  named after it (only chunks the store lacks travel);
- ``dataset[@snapshot]``: that dataset's head or the given snapshot.

Jobs only ever see snapshots, so they are reproducible and their inputs
cannot change under them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from nerdfs import Datasets, NotFound, Repository, UsageError, check_dataset_name, control

from ..config import Config
from ..jobs.model import RUNTIMES, InputSpec, JobSpec, OutputSpec
from . import datatransfer
from .working import mount_of, same_store

_DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d`` or ``[[D-]HH:]MM:SS`` → seconds."""
    t = text.strip().lower()
    m = _DURATION.match(t)
    if m:
        return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    days = 0
    if "-" in t:
        d, _, t = t.partition("-")
        days = int(d) if d.isdigit() else -1
    parts = t.split(":")
    if days < 0 or not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise UsageError(f"invalid time limit {text!r}: use e.g. 90s, 10m, 2h or HH:MM:SS")
    secs = 0
    for p in parts:
        secs = secs * 60 + int(p)
    return days * 86400 + secs


def split_dest(arg: str, default: str) -> tuple[str, str]:
    """``SRC:/dest`` → (SRC, /dest); without a ``:/`` the destination is ``default``."""
    src, sep, dest = arg.rpartition(":")
    if sep and dest.startswith("/") and src:
        return src, dest
    return arg, default


def resolve_input(arg: str, config: Config, repo: Repository, warn=None) -> InputSpec:
    src, dest = split_dest(arg, "/input")
    store = config.datasets.store_url()
    found = mount_of(src) if "/" in src or os.path.exists(src) else None
    if found is not None:
        mnt, ds, sub = found
        status = control.call(mnt, {"op": "status"}, timeout=30)
        if not same_store(status.get("store", ""), store):
            raise UsageError(f"input {src}: mount {mnt} uses store {status.get('store')}, but jobs use {store} — "
                             "set datasets.store (or NERD_STORE) to the mount's store")
        if "@" in ds:  # MNT/.snapshots/DS/ID/...: already a snapshot
            name, sid, _snap = Datasets(repo).resolve(ds)
        else:
            if not os.path.isdir(src):
                raise UsageError(f"input {src} is not a directory in the mount — inputs are directories")
            name = ds
            sid = control.call(mnt, {"op": "sync", "datasets": [ds]}, timeout=None)["snapshots"].get(ds)
            if not sid:
                raise UsageError(f"input {src}: dataset {ds} in {mnt} has no snapshot yet (is it empty?)")
        return InputSpec(dataset=name, snapshot=sid, path=sub, dest=dest)
    if os.path.isdir(src):
        up = datatransfer.upload(src, config=config, repo=repo, warn=warn)
        return InputSpec(dataset=up.dataset, snapshot=up.snapshot, path="", dest=dest)
    if os.path.exists(src):
        raise UsageError(f"input {src} is a file — inputs are directories (or dataset[@snapshot])")
    name, _, snap = src.partition("@")
    if "/" in src or src.startswith("."):
        raise NotFound(f"input {src}: no such directory, and not a dataset name — give a directory, a path in a "
                       "nerdfs mount or dataset[@snapshot]")
    try:
        check_dataset_name(name)
    except UsageError:
        raise UsageError(f"input {src!r} is neither a directory nor a dataset[@snapshot]") from None
    name, sid, _snap = Datasets(repo).resolve(src)
    return InputSpec(dataset=name, snapshot=sid, path="", dest=dest)


def parse_output(arg: str, job_id: str) -> OutputSpec:
    """``[DATASET:]DEST``; without a dataset the output goes to ``<job id>-output``."""
    ds, sep, dest = arg.rpartition(":")
    if not sep:
        ds, dest = "", arg
    if not dest.startswith("/"):
        raise UsageError(f"output {arg!r}: the destination must be an absolute path, e.g. results:/out")
    return OutputSpec(dataset=check_dataset_name(ds or f"{job_id}-output"), dest=dest)


def task_args(array: int | None, tasks_file: str | None) -> list[list[str]]:
    if array is not None and tasks_file is not None:
        raise UsageError("--array and --tasks exclude each other — give one")
    if array is not None:
        if array < 1:
            raise UsageError(f"--array {array}: give at least 1 task")
        return [[] for _ in range(array)]
    if tasks_file is not None:
        try:
            text = Path(tasks_file).read_text() if tasks_file != "-" else sys.stdin.read()
        except FileNotFoundError:
            raise NotFound(f"--tasks {tasks_file}: no such file") from None
        try:
            lines = [shlex.split(ln) for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        except ValueError as e:
            raise UsageError(f"--tasks {tasks_file}: {e}") from None
        if not lines:
            raise UsageError(f"--tasks {tasks_file} has no tasks (one per non-empty line)")
        return lines
    return [[]]


def default_runtime() -> str:
    for rt in ("podman", "docker"):
        if shutil.which(rt):
            return rt
    return "process"


def build_spec(*, job_id: str, image: str, command: list[str], config: Config, name: str | None = None,
               inputs: list[str] = (), outputs: list[str] = (), env: list[str] = (), cpus: float | None = None,
               memory: str | None = None, time_limit: str | None = None, array: int | None = None,
               tasks_file: str | None = None, parallel: int | None = None, retries: int = 0,
               runtime: str | None = None, fail_fast: bool = False, repo: Repository | None = None,
               warn=None) -> JobSpec:
    """Everything ``nerd run`` was given, checked, with inputs resolved (mount commits, uploads)."""
    runtime = runtime or default_runtime()
    if runtime not in RUNTIMES:
        raise UsageError(f"--runtime {runtime}: use one of {', '.join(RUNTIMES)}")
    envs = {}
    for kv in env:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise UsageError(f"-e {kv!r}: use KEY=VALUE")
        envs[k] = v
    if parallel is not None and parallel < 1:
        raise UsageError("--parallel must be at least 1")
    if retries < 0:
        raise UsageError("--retries must not be negative")
    if cpus is not None and cpus <= 0:
        raise UsageError("--cpus must be positive")
    try:
        mem = parse_size_arg(memory)
    except ValueError as e:
        raise UsageError(f"--memory: {e}") from None
    outs = [parse_output(o, job_id) for o in outputs] or [OutputSpec(f"{job_id}-output", "/output")]
    if len({o.dataset for o in outs}) != len(outs):
        raise UsageError("two --output options name the same dataset — give each its own")
    args = task_args(array, tasks_file)
    own = repo is None
    repo = repo or datatransfer.open_repository(config)
    try:
        ins = [resolve_input(i, config, repo, warn) for i in inputs]
    finally:
        if own:
            repo.close()
    dests = [i.dest for i in ins] + [o.dest for o in outs]
    if len({os.path.normpath(d) for d in dests}) != len(dests):
        raise UsageError("two inputs/outputs use the same destination — give each its own :DEST")
    if any(os.path.normpath(d) == "/" for d in dests):
        raise UsageError("a destination must not be / — use e.g. /data")
    if runtime == "process" and "/" in image and not os.path.isabs(image):
        image = os.path.abspath(image)  # tasks run in their own work directory
    s3 = config.datasets.s3
    store = config.datasets.store_url()
    return JobSpec(name=name or Path(image).name or "job", image=image, command=list(command), inputs=ins,
                   outputs=outs, env=envs, cpus=cpus, memory=mem,
                   time_limit=parse_duration(time_limit) if time_limit else None, task_args=args,
                   parallel=parallel, retries=retries, runtime=runtime, fail_fast=fail_fast, store=store,
                   s3=asdict(s3) if store.startswith("s3://") else None)


def parse_size_arg(memory: str | None) -> int | None:
    if memory is None:
        return None
    from nerdfs.settings import parse_size

    n = parse_size(memory, "memory")
    if n < 4 << 20:
        raise ValueError(f"{memory} is too small (at least 4MiB)")
    return n


__all__ = ["build_spec", "resolve_input", "parse_output", "parse_duration", "split_dest", "task_args",
           "default_runtime"]
