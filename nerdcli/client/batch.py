"""Jobs on the selected backend, as plain functions: the SDK behind ``nerd run`` and ``nerd job``.

    from nerdcli.client import batch
    from nerdcli.jobs.model import JobSpec, OutputSpec
    job = batch.submit(JobSpec(name="count", image="sh", command=["-c", "ls $NERD_INPUT > $NERD_OUTPUT/n"],
                               outputs=[OutputSpec("counts", "/out")], runtime="process"), config)
    job = batch.wait(job.id)
    print(job.state, job.exit_code, job.outputs)

State, listing and logs are read from the job directory; the backend is asked
first (``refresh``) about tasks only it knows ended abnormally.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from nerdfs import NotFound, UsageError

from ..jobs.backend import Backend, backend_name, open_backend
from ..jobs.model import (FINAL_STATES, PENDING, RUNNING, JobDir, JobSpec, job_state, jobs_dir, new_job_id)


@dataclass
class Job:
    id: str
    name: str
    state: str
    exit_code: int | None
    tasks: int
    counts: dict[str, int]  # tasks by state
    backend: str
    submitted: str
    finished: str | None = None
    image: str = ""
    runtime: str = ""
    inputs: list[dict] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # dataset -> snapshot (once finished)
    failed: list[dict] = field(default_factory=list)  # the first failed tasks: index, exit_code, error
    dir: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES


def _open(config, endpoint: str | None = None) -> Backend:
    """The backend, given the login's JWT (refreshed when it expired) for services that take one."""
    backend = open_backend(config, endpoint)
    if hasattr(backend, "token_provider") and config is not None and config.auth.public_key:
        from . import auth

        backend.token_provider = lambda: auth.current_token(config)
    return backend


def _backend_for(jd: JobDir, doc: dict, config=None) -> Backend:
    endpoint = doc.get("endpoint") or doc.get("backend") or "local"
    return _open(config, endpoint)


def submit(spec: JobSpec, config=None, *, endpoint: str | None = None, job_id: str | None = None) -> Job:
    """Create the job directory and hand the tasks to the backend (``endpoint``: default the config's)."""
    if spec.tasks < 1:
        raise UsageError("a job needs at least one task")
    ep = endpoint if endpoint is not None else (config.nerd_api_endpoint if config is not None else "local")
    backend = _open(config, ep)
    jd = JobDir.create(job_id or new_job_id(), spec, backend_name(ep))
    doc = jd.job()
    doc["endpoint"] = ep
    jd.write_job(doc)
    try:
        ref = backend.submit(jd.path, spec)
    except BaseException:
        import shutil

        shutil.rmtree(jd.path, ignore_errors=True)
        raise
    doc["backend_ref"] = ref or {}
    jd.write_job(doc)
    return status(jd, refresh=False, config=config)


def status(jd: JobDir, *, refresh: bool = True, config=None) -> Job:
    """The job's state from its directory (a finished job: from result.json alone, without reading every task)."""
    doc = jd.job()
    spec = JobSpec.from_dict(doc["spec"])
    backend = None
    if refresh and jd.result() is None:
        backend = _backend_for(jd, doc, config)
        backend.refresh(jd.path)
    result = jd.result()
    if result is not None and "failed" in result:
        counts, failed = dict(result.get("tasks", {})), list(result["failed"])
        state, code = result["state"], result["exit_code"]
    else:
        records = jd.tasks()
        counts = {}
        for r in records.values():
            counts[r.state] = counts.get(r.state, 0) + 1
        live: dict[int, str] = {}
        if result is None:
            backend = backend or _backend_for(jd, doc, config)
            states = getattr(backend, "task_states", None)
            live = {i: s for i, s in (states(jd.path) if states else {}).items() if i not in records}
        for s in live.values():
            counts[s] = counts.get(s, 0) + 1
        unknown = spec.tasks - len(records) - len(live)
        if unknown > 0:
            counts[PENDING] = counts.get(PENDING, 0) + unknown
        if result is not None:
            state, code = result["state"], result["exit_code"]
        else:
            state, code = job_state(records, spec.tasks)
            if state in FINAL_STATES:
                state, code = RUNNING, None  # every task ended; the commit of the outputs is under way
            elif counts.get(RUNNING) or records:
                state = RUNNING
        bad = sorted((r for r in records.values() if r.state == "failed"), key=lambda r: (r.ended or "", r.index))
        failed = [{"index": r.index, "exit_code": r.exit_code, "error": r.error} for r in bad[:10]]
    return Job(id=jd.id, name=spec.name, state=state, exit_code=code, tasks=spec.tasks,
               counts=dict(sorted(counts.items())), backend=doc.get("backend", "local"),
               submitted=doc.get("submitted", ""), finished=(result or {}).get("finished"), image=spec.image,
               runtime=spec.runtime,
               inputs=[{"dataset": i.dataset, "snapshot": i.snapshot, "path": i.path, "dest": i.dest}
                       for i in spec.inputs],
               outputs=(result or {}).get("outputs", {}), failed=failed, dir=str(jd.path))


def get(job_id: str, config=None) -> Job:
    return status(JobDir.find(job_id), config=config)


def list_jobs(config=None, limit: int | None = None) -> list[Job]:
    """Jobs in this NERD_HOME, newest first."""
    root = jobs_dir()
    if not root.is_dir():
        return []
    dirs = sorted((p for p in root.iterdir() if (p / "job.json").exists()), key=lambda p: p.name, reverse=True)
    return [status(JobDir(p), config=config) for p in dirs[:limit]]


def cancel(job_id: str, config=None, wait: float = 30.0) -> Job:
    """Cancel a job: pending tasks never start, running ones are killed; waits up to ``wait`` s for it to end."""
    jd = JobDir.find(job_id)
    _backend_for(jd, jd.job(), config).cancel(jd.path)
    deadline = time.monotonic() + wait
    job = status(jd, config=config)
    while not job.done and time.monotonic() < deadline:
        time.sleep(0.2)
        job = status(jd, config=config)
    return job


def wait(job_id: str, timeout: float | None = None, config=None, poll: float = 0.5) -> Job:
    """Block until the job has finished (and its outputs are committed); TimeoutError after ``timeout`` s.

    Watches only for result.json (cheap), asking the backend to refresh every
    ``poll`` s: reading every task record per poll slowed 1,000-task jobs down.
    """
    jd = JobDir.find(job_id)
    backend = _backend_for(jd, jd.job(), config)
    deadline = None if timeout is None else time.monotonic() + timeout
    result_path = jd.path / "result.json"
    delay, last_refresh = 0.01, 0.0
    while not result_path.exists():
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            job = status(jd, config=config)
            raise TimeoutError(f"job {jd.id} still {job.state} after {timeout:g} s")
        if now - last_refresh >= poll:
            backend.refresh(jd.path)
            last_refresh = time.monotonic()
            continue
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)
    return status(jd, config=config)


def logs(job_id: str, task: int | None = None, follow: bool = False, poll: float = 0.3) -> Iterator[str]:
    """The log text of one task (or all, each line prefixed ``[i]``); ``follow`` streams until the job ends."""
    jd = JobDir.find(job_id)
    spec = jd.spec()
    if task is not None and not 0 <= task < spec.tasks:
        raise NotFound(f"job {jd.id} has no task {task} (it has {spec.tasks}: 0-{spec.tasks - 1})")
    backend = _backend_for(jd, jd.job())
    indices = [task] if task is not None else list(range(spec.tasks))
    offsets = {i: 0 for i in indices}
    while True:
        finished = jd.result() is not None
        for i in indices:
            chunk = _read_from(jd.log_path(i), offsets[i])
            if chunk:
                offsets[i] += len(chunk)
                text = chunk.decode(errors="replace")
                yield text if task is not None else "".join(f"[{i}] {ln}\n" for ln in text.splitlines())
        if not follow or finished:
            return
        backend.refresh(jd.path)  # lets the backend notice dead workers and finish the job
        time.sleep(poll)


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""


def workers(config=None) -> list[dict]:
    return _open(config).workers()


__all__ = ["Job", "submit", "get", "status", "list_jobs", "cancel", "wait", "logs", "workers"]
