"""What a job is, as plain JSON-round-trippable dataclasses, and its directory on disk.

The job directory (``<nerd home>/jobs/<job-id>/``) is the single source of
truth every backend shares (JOBS-SPEC.md)::

    job.json          {"id", "spec", "backend", "backend_ref", "submitted"}
    tasks/<i>.json    one task's final record, written atomically by the task runner
    logs/<i>.log      the task's stdout+stderr (all attempts, appended)
    result.json       written once by finalize: {"state", "exit_code", "outputs"}

Backends keep their own bookkeeping (a queue, a Slurm job id) elsewhere; what
a user sees (state, logs, outputs) is read from here.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nerdfs import NotFound, UsageError
from nerdfs.settings import nerd_home

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = "pending", "running", "succeeded", "failed", "cancelled"
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)
RUNTIMES = ("podman", "docker", "process")
CANCELLED_EXIT = 130  # exit code of a cancelled job (as for Ctrl-C)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def jobs_dir() -> Path:
    """Where job directories live: ``$NERD_HOME/jobs`` (on a cluster, the shared home)."""
    return nerd_home() / "jobs"


def new_job_id() -> str:
    """Short, sortable, unique: ``j-20261204-230501-3fa2c1``."""
    return datetime.now(timezone.utc).strftime("j-%Y%m%d-%H%M%S-") + secrets.token_hex(3)


@dataclass
class InputSpec:
    dataset: str
    snapshot: str
    path: str = ""  # subpath inside the snapshot, "" = its root
    dest: str = "/input"  # where the task sees it


@dataclass
class OutputSpec:
    dataset: str
    dest: str = "/output"


@dataclass
class JobSpec:
    name: str
    image: str
    command: list[str] = field(default_factory=list)
    inputs: list[InputSpec] = field(default_factory=list)
    outputs: list[OutputSpec] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cpus: float | None = None
    memory: int | None = None  # bytes
    time_limit: int | None = None  # seconds per task attempt
    task_args: list[list[str]] = field(default_factory=lambda: [[]])  # one entry per task
    parallel: int | None = None
    retries: int = 0
    runtime: str = "process"
    fail_fast: bool = False
    store: str = ""
    s3: dict | None = None

    @property
    def tasks(self) -> int:
        return len(self.task_args)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "JobSpec":
        doc = dict(doc)
        doc["inputs"] = [InputSpec(**i) for i in doc.get("inputs", [])]
        doc["outputs"] = [OutputSpec(**o) for o in doc.get("outputs", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in known})


@dataclass
class TaskRecord:
    """``tasks/<i>.json``: how a task ended (its last attempt)."""

    index: int
    state: str
    exit_code: int | None = None
    attempts: int = 0
    started: str | None = None
    ended: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # dataset -> tree id (absent: no output)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "TaskRecord":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in known})


def write_json(path: Path, doc: Any, mode: int = 0o644) -> None:
    """Atomically (temp file + rename): readers see the old or the new document, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


class JobDir:
    """One job's directory: paths and the documents in it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, job_id: str, spec: JobSpec, backend: str, root: Path | None = None) -> "JobDir":
        d = cls((root or jobs_dir()) / job_id)
        d.path.mkdir(parents=True, mode=0o700)
        (d.path / "tasks").mkdir()
        (d.path / "logs").mkdir()
        d.write_job({"id": job_id, "spec": spec.to_dict(), "backend": backend, "backend_ref": {},
                     "submitted": now_iso()})
        return d

    @classmethod
    def find(cls, job_id: str, root: Path | None = None) -> "JobDir":
        """The directory of ``job_id`` (a full id or a unique prefix), or NotFound."""
        root = root or jobs_dir()
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise UsageError(f"invalid job id {job_id!r} — see `nerd job list`")
        d = root / job_id
        if (d / "job.json").exists():
            return cls(d)
        matches = [p for p in root.glob(f"{job_id}*") if (p / "job.json").exists()] if root.is_dir() else []
        if len(matches) == 1:
            return cls(matches[0])
        if len(matches) > 1:
            raise UsageError(f"job id prefix {job_id!r} is ambiguous — give more of it")
        raise NotFound(f"no job {job_id!r} — see `nerd job list`")

    @property
    def id(self) -> str:
        return self.path.name

    def job(self) -> dict[str, Any]:
        doc = read_json(self.path / "job.json")
        if doc is None:
            raise NotFound(f"job directory {self.path} has no job.json")
        return doc

    def write_job(self, doc: dict[str, Any]) -> None:
        # 0600: the spec may carry S3 credentials for the workers
        write_json(self.path / "job.json", doc, mode=0o600)

    def spec(self) -> JobSpec:
        return JobSpec.from_dict(self.job()["spec"])

    def task_path(self, index: int) -> Path:
        return self.path / "tasks" / f"{index}.json"

    def log_path(self, index: int) -> Path:
        return self.path / "logs" / f"{index}.log"

    def task(self, index: int) -> TaskRecord | None:
        doc = read_json(self.task_path(index))
        return TaskRecord.from_dict(doc) if doc else None

    def write_task(self, rec: TaskRecord) -> None:
        write_json(self.task_path(rec.index), rec.to_dict())

    def tasks(self) -> dict[int, TaskRecord]:
        """Every task that has a final record, by index."""
        out = {}
        for p in (self.path / "tasks").glob("*.json"):
            try:
                doc = json.loads(p.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            out[int(doc["index"])] = TaskRecord.from_dict(doc)
        return out

    def result(self) -> dict[str, Any] | None:
        return read_json(self.path / "result.json")

    def write_result(self, doc: dict[str, Any]) -> None:
        write_json(self.path / "result.json", doc)


def job_state(records: dict[int, TaskRecord], ntasks: int) -> tuple[str, int | None]:
    """The job's (state, exit code) from its final task records.

    A job succeeds when all tasks succeed; it fails with the exit code of the
    first task (by end time) that failed; a cancelled job (no failures) exits 130.
    """
    if len(records) < ntasks or any(r.state not in FINAL_STATES for r in records.values()):
        return (RUNNING if records else PENDING), None
    failed = sorted((r for r in records.values() if r.state == FAILED), key=lambda r: (r.ended or "", r.index))
    if failed:
        code = failed[0].exit_code
        return FAILED, code if code not in (None, 0) else 1
    if any(r.state == CANCELLED for r in records.values()):
        return CANCELLED, CANCELLED_EXIT
    return SUCCEEDED, 0


__all__ = ["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "FINAL_STATES", "RUNTIMES", "InputSpec",
           "OutputSpec", "JobSpec", "TaskRecord", "JobDir", "jobs_dir", "new_job_id", "now_iso", "job_state",
           "write_json", "read_json", "CANCELLED_EXIT"]
