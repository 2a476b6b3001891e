"""The local backend: a persistent queue (SQLite, WAL) and worker processes on this machine.

``<nerd home>/jobs/queue.db`` holds one row per job and per task. A worker
claims the next pending task in a ``BEGIN IMMEDIATE`` transaction (respecting
each job's ``--parallel`` cap), runs it in-process with
:func:`nerdcli.service.working.run_task` (one Python process runs many tasks:
no start-up, repository or LMDB opening per task), and marks it done; the
worker that ends a job's last task finalizes it, exactly once.

Workers heartbeat every half second. A worker that died (``kill -9``, reboot)
is noticed by the next worker or ``nerd job`` command that looks: its tasks
are re-queued (their left-behind processes or containers killed) and run
again. Cancellation sets a flag the running task's worker sees within half a
second and kills the task (its process group, or its container).

Workers start on demand (``nerd run`` starts two per core, at most one per
waiting task; they exit after two idle minutes) or with ``nerd worker start``.
Run one by hand with ``python -m nerdcli.jobs.local worker``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nerdfs import ConfigError, Conflict, IntegrityError, NerdError, NotFound, StoreError, UsageError

from .model import CANCELLED, FAILED, PENDING, RUNNING, JobDir, JobSpec, jobs_dir, read_json

log = logging.getLogger(__name__)

HEARTBEAT = 0.5  # seconds between a worker's heartbeats (and cancel checks)
DEAD_AFTER = 30.0  # a worker on another host without a heartbeat for this long is dead
AUTO_IDLE = 120.0  # on-demand workers exit after this long without work
MAX_REQUEUES = 3  # a task whose worker died this many times more than its retries fails

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, dir TEXT NOT NULL, ntasks INTEGER NOT NULL, parallel INTEGER, fail_fast INTEGER NOT NULL,
    retries INTEGER NOT NULL, running INTEGER NOT NULL DEFAULT 0, remaining INTEGER NOT NULL,
    state TEXT NOT NULL, submitted REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    job TEXT NOT NULL, idx INTEGER NOT NULL, state TEXT NOT NULL, worker TEXT, handle TEXT,
    runs INTEGER NOT NULL DEFAULT 0, cancel INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (job, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tasks_pending ON tasks (job, idx) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS tasks_worker ON tasks (worker) WHERE state = 'running';
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY, pid INTEGER NOT NULL, host TEXT NOT NULL, started REAL NOT NULL, heartbeat REAL NOT NULL,
    state TEXT NOT NULL, current TEXT, done INTEGER NOT NULL DEFAULT 0, auto INTEGER NOT NULL DEFAULT 0
);
"""
# jobs.state: active → (cancelling) → finalizing → done.  tasks.state: pending → running → done.


def queue_path() -> Path:
    return jobs_dir() / "queue.db"


class Queue:
    """The queue database: short transactions, safe for many processes."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or queue_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._lock = threading.Lock()  # one connection shared by a worker's threads

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``: the write lock is taken up front, no upgrade deadlocks)."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    # ------------------------------------------------------------------------------------------ jobs

    def add_job(self, job_dir: Path, spec: JobSpec) -> None:
        jid = job_dir.name
        with self.tx() as db:
            db.execute("INSERT INTO jobs (id, dir, ntasks, parallel, fail_fast, retries, remaining, state, submitted) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?)",
                       (jid, str(job_dir), spec.tasks, spec.parallel, int(spec.fail_fast), spec.retries, spec.tasks,
                        time.time()))
            db.executemany("INSERT INTO tasks (job, idx, state) VALUES (?, ?, 'pending')",
                           ((jid, i) for i in range(spec.tasks)))

    def claim(self, worker: str) -> tuple[str, str, int, int] | None:
        """The next task to run, marked running for ``worker``: (job id, job dir, index, run number), or None."""
        with self.tx() as db:
            row = db.execute(
                "SELECT j.id, j.dir, (SELECT t.idx FROM tasks t WHERE t.job = j.id AND t.state = 'pending' "
                "ORDER BY t.idx LIMIT 1) AS idx FROM jobs j WHERE j.state = 'active' AND j.remaining > j.running "
                "AND (j.parallel IS NULL OR j.running < j.parallel) AND idx IS NOT NULL "
                "ORDER BY j.submitted, j.id LIMIT 1").fetchone()
            if row is None:
                db.execute("UPDATE workers SET current = NULL WHERE id = ?", (worker,))
                return None
            jid, jdir, idx = row
            db.execute("UPDATE tasks SET state = 'running', worker = ?, handle = NULL, runs = runs + 1 "
                       "WHERE job = ? AND idx = ?", (worker, jid, idx))
            db.execute("UPDATE jobs SET running = running + 1 WHERE id = ?", (jid,))
            db.execute("UPDATE workers SET current = ? WHERE id = ?", (f"{jid}/{idx}", worker))
            runs = db.execute("SELECT runs FROM tasks WHERE job = ? AND idx = ?", (jid, idx)).fetchone()[0]
            return jid, jdir, idx, runs

    def complete(self, worker: str, jid: str, idx: int, state: str) -> bool:
        """Mark the task done; True if the caller must finalize the job (it ended the last task)."""
        with self.tx() as db:
            cur = db.execute("UPDATE tasks SET state = 'done', handle = NULL WHERE job = ? AND idx = ? AND "
                             "state = 'running' AND worker = ?", (jid, idx, worker))
            if cur.rowcount:
                db.execute("UPDATE jobs SET running = running - 1, remaining = remaining - 1 WHERE id = ?", (jid,))
                db.execute("UPDATE workers SET done = done + 1, current = NULL WHERE id = ?", (worker,))
            return self._finalizing(db, jid)

    @staticmethod
    def _finalizing(db: sqlite3.Connection, jid: str) -> bool:
        row = db.execute("SELECT remaining, state FROM jobs WHERE id = ?", (jid,)).fetchone()
        if row and row[0] <= 0 and row[1] in ("active", "cancelling"):
            db.execute("UPDATE jobs SET state = 'finalizing' WHERE id = ?", (jid,))
            return True
        return False

    def finished(self, jid: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE jobs SET state = 'done' WHERE id = ?", (jid,))

    def task_states(self, jid: str) -> dict[int, str]:
        return {i: s for i, s in self.read("SELECT idx, state FROM tasks WHERE job = ? AND state != 'done'", (jid,))}

    def job_row(self, jid: str) -> tuple | None:
        rows = self.read("SELECT state, remaining, running FROM jobs WHERE id = ?", (jid,))
        return rows[0] if rows else None

    # ------------------------------------------------------------------------------------------ workers

    def register(self, wid: str, pid: int, auto: bool) -> None:
        now = time.time()
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO workers (id, pid, host, started, heartbeat, state, auto) "
                       "VALUES (?, ?, ?, ?, ?, 'starting', ?)", (wid, pid, socket.gethostname(), now, now, int(auto)))

    def heartbeat(self, wid: str, current: tuple[str, int] | None, handle: str | None) -> tuple[bool, bool]:
        """(whether the current task was cancelled, whether this worker was asked to stop)."""
        with self.tx() as db:
            cur = db.execute("UPDATE workers SET heartbeat = ?, state = CASE state WHEN 'stopping' THEN state "
                             "ELSE ? END WHERE id = ?", (time.time(), "busy" if current else "idle", wid))
            if not cur.rowcount:
                return False, True  # our row was removed: we were declared dead or stopped
            row = db.execute("SELECT state FROM workers WHERE id = ?", (wid,)).fetchone()
            cancelled = False
            if current:
                if handle:
                    db.execute("UPDATE tasks SET handle = ? WHERE job = ? AND idx = ? AND worker = ?",
                               (handle, current[0], current[1], wid))
                r = db.execute("SELECT cancel FROM tasks WHERE job = ? AND idx = ?", current).fetchone()
                cancelled = bool(r and r[0])
            return cancelled, bool(row and row[0] == "stopping")

    def unregister(self, wid: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM workers WHERE id = ?", (wid,))

    def workers(self) -> list[dict]:
        rows = self.read("SELECT id, pid, host, started, heartbeat, state, current, done, auto FROM workers "
                         "ORDER BY started")
        return [{"id": r[0], "pid": r[1], "host": r[2], "started": r[3], "heartbeat": r[4], "state": r[5],
                 "task": r[6], "tasks_done": r[7], "auto": bool(r[8])} for r in rows]


_BASE_ERRORS = (UsageError, ConfigError, NotFound, Conflict, StoreError, IntegrityError)


def auto_workers() -> int:
    """How many workers ``nerd run`` keeps: two per core (NERD_WORKERS overrides).

    Short tasks spend much of their time waiting (process start, fsync of their
    outputs in the store): two per core kept both cores busy (1,000 tasks: 3.2 s
    with 2 workers, 2.2 s with 4, on 2 cores).
    """
    env = os.environ.get("NERD_WORKERS", "")
    return int(env) if env.isdigit() and int(env) > 0 else 2 * (os.cpu_count() or 1)


def check_image(spec: JobSpec) -> None:
    """Refuse a job whose container runtime or image is missing here, before any task is queued."""
    rt = spec.runtime
    if rt == "process":
        return
    if shutil.which(rt) is None:
        raise UsageError(f"container runtime {rt} is not installed — install it or use --runtime process")
    r = subprocess.run([rt, "image", "inspect", "--format", "{{.Id}}", spec.image], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0 and "daemon" in r.stderr.lower():
        raise UsageError(f"{rt} does not answer ({r.stderr.strip().splitlines()[-1]}) — start it, or use another "
                         "--runtime")
    if r.returncode != 0:
        raise NotFound(f"image {spec.image} is not in {rt}'s local images — build, load or pull it first "
                       f"(nerd never pulls): {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}".rstrip(": "))


def _alive(w: dict) -> bool:
    if w["host"] != socket.gethostname():
        return time.time() - w["heartbeat"] < DEAD_AFTER
    try:
        os.kill(w["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a reused pid is not our worker; a zombie (our own child that died) is dead
        with open(f"/proc/{w['pid']}/stat") as f:
            if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return False
        with open(f"/proc/{w['pid']}/cmdline", "rb") as f:
            return b"nerdcli.jobs.local" in f.read()
    except OSError:
        return False


class LocalBackend:
    """Jobs on this machine: the queue plus worker processes."""

    name = "local"

    def __init__(self, queue: Queue | None = None, config=None) -> None:
        self._queue = queue
        self.config = config  # its file is handed to the workers this backend starts
        self.startup_failures: list[dict] = []  # workers that died before their first heartbeat

    @property
    def queue(self) -> Queue:
        if self._queue is None:
            self._queue = Queue()
        return self._queue

    def submit(self, job_dir: Path, spec: JobSpec) -> dict:
        check_image(spec)
        self.queue.add_job(Path(job_dir), spec)
        self.ensure_workers()
        return {"queue": str(self.queue.path)}

    def refresh(self, job_dir: Path) -> None:
        jd = JobDir(job_dir)
        if jd.result() is not None:
            return
        self.reap()
        self._check_startup()
        row = self.queue.job_row(jd.id)
        if row is None:
            return
        state, remaining, _running = row
        if remaining <= 0:
            self._finalize(jd, raise_errors=True)  # idempotent: finishes a finalize that failed or whose worker died
        elif state in ("active", "cancelling"):
            self.ensure_workers()

    def _check_startup(self) -> None:
        """A worker that dies before its first heartbeat would be restarted forever: say why instead."""
        if not self.startup_failures:
            return
        w = self.startup_failures.pop()
        self.startup_failures.clear()
        log_path = jobs_dir() / "workers" / f"{w['id']}.log"
        try:
            lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            lines = []
        raise NerdError(f"a worker (pid {w['pid']}) died while starting: {lines[-1].strip() if lines else 'no log'} "
                        f"— see {log_path}")

    def _finalize(self, jd: JobDir, ctx=None, raise_errors: bool = False) -> dict | None:
        """Commit the job's outputs. A worker logs a failure and goes on (the job stays 'finalizing');
        the next ``nerd job status|wait`` retries and reports the error to the user."""
        from ..service import working

        try:
            result = working.finalize(jd.path, ctx=ctx)
        except Exception as e:  # noqa: BLE001 - a worker must survive a store that is down
            if raise_errors:
                if isinstance(e, NerdError):
                    kind = next(k for k in (*_BASE_ERRORS, NerdError) if isinstance(e, k))
                    raise kind(f"job {jd.id}: every task ended, but committing its outputs failed: {e}") from None
                raise
            log.warning("job %s: finalize failed: %s", jd.id, e)
            return None
        self.queue.finished(jd.id)
        return result

    def cancel(self, job_dir: Path) -> None:
        from ..service import working

        jd = JobDir(job_dir)
        result = jd.result()
        if result is not None:
            raise Conflict(f"job {jd.id} already {result['state']} — nothing to cancel")
        must_finalize = False
        with self.queue.tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (jd.id,)).fetchone()
            if row is None:
                raise NotFound(f"job {jd.id} is not in the local queue {self.queue.path}")
            if row[0] in ("finalizing", "done"):
                raise Conflict(f"job {jd.id} already finished — nothing to cancel")
            pending = [r[0] for r in db.execute("SELECT idx FROM tasks WHERE job = ? AND state = 'pending'", (jd.id,))]
            for i in pending:  # written inside the transaction: a finalize never sees them missing
                jd.write_task(working.cancelled_record(i))
            db.execute("UPDATE tasks SET state = 'done' WHERE job = ? AND state = 'pending'", (jd.id,))
            db.execute("UPDATE tasks SET cancel = 1 WHERE job = ? AND state = 'running'", (jd.id,))
            db.execute("UPDATE jobs SET state = 'cancelling', remaining = remaining - ? WHERE id = ?",
                       (len(pending), jd.id))
            must_finalize = self.queue._finalizing(db, jd.id)
        if must_finalize:
            self._finalize(jd)

    def task_states(self, job_dir: Path) -> dict[int, str]:
        """pending/running for tasks without a final record (the queue knows; the job directory does not)."""
        return {i: (RUNNING if s == "running" else PENDING)
                for i, s in self.queue.task_states(Path(job_dir).name).items()}

    def workers(self) -> list[dict]:
        self.reap()
        return self.queue.workers()

    # ------------------------------------------------------------------------------------------ workers

    def reap(self) -> int:
        """Re-queue the tasks of workers that died; the number of dead workers found."""
        from ..service import working

        dead = [w for w in self.queue.workers() if not _alive(w)]
        for w in dead:
            if w["state"] == "starting":
                self.startup_failures.append(w)
            lost = []
            with self.queue.tx() as db:
                if db.execute("DELETE FROM workers WHERE id = ?", (w["id"],)).rowcount == 0:
                    continue  # someone else reaped it
                rows = db.execute("SELECT t.job, t.idx, t.handle, t.runs, j.retries, j.dir, t.cancel FROM tasks t "
                                  "JOIN jobs j ON j.id = t.job WHERE t.worker = ? AND t.state = 'running'",
                                  (w["id"],)).fetchall()
                for jid, idx, handle, runs, retries, jdir, cancel in rows:
                    # killed before the task can be claimed again: a re-run reuses its container name
                    working.kill_handle(handle)
                    jd = JobDir(jdir)
                    if not handle:  # killed before its first heartbeat named what it started
                        try:
                            working.remove_task_containers(jd.spec().runtime, jid, idx)
                        except (OSError, ValueError, NerdError) as e:
                            log.warning("job %s task %d: cannot look for its containers: %s", jid, idx, e)
                    rec = jd.task(idx)
                    if rec is not None:
                        # the task ended and wrote its record; only the worker's bookkeeping was lost
                        finished = True
                    elif cancel:
                        jd.write_task(working.cancelled_record(idx))
                        finished = True
                    elif runs > retries + MAX_REQUEUES:
                        jd.write_task(working.cancelled_record(
                            idx, f"its worker died {runs} times (killed, out of memory?)", FAILED, 1))
                        finished = True
                    else:
                        finished = False
                    if finished:
                        db.execute("UPDATE tasks SET state = 'done', handle = NULL WHERE job = ? AND idx = ?",
                                   (jid, idx))
                        db.execute("UPDATE jobs SET running = running - 1, remaining = remaining - 1 WHERE id = ?",
                                   (jid,))
                        if self.queue._finalizing(db, jid):
                            lost.append(jd)
                    else:
                        db.execute("UPDATE tasks SET state = 'pending', worker = NULL, handle = NULL "
                                   "WHERE job = ? AND idx = ?", (jid, idx))
                        db.execute("UPDATE jobs SET running = running - 1 WHERE id = ?", (jid,))
                        log.warning("worker %s died: task %d of job %s re-queued", w["id"], idx, jid)
            for jd in lost:
                self._finalize(jd)
        return len(dead)

    def ensure_workers(self, want: int | None = None) -> list[int]:
        """Start workers so that min(cores, runnable tasks) are alive; the pids started."""
        self.reap()
        if want is None:
            runnable = 0
            for remaining, running, parallel in self.queue.read(
                    "SELECT remaining, running, parallel FROM jobs WHERE state = 'active'"):
                pending = remaining - running
                runnable += min(pending, max(0, parallel - running)) if parallel else pending
                runnable += running
            want = min(auto_workers(), runnable)
        live = [w for w in self.queue.workers() if w["host"] == socket.gethostname()]
        return [self.start_worker(auto=True) for _ in range(want - len(live))]

    def start_worker(self, auto: bool = False, idle_timeout: float | None = None) -> int:
        """A detached worker process (it outlives the command that started it); returns its pid."""
        idle = AUTO_IDLE if auto and idle_timeout is None else (idle_timeout or 0)
        logs = jobs_dir() / "workers"
        logs.mkdir(parents=True, exist_ok=True)
        wid = f"w-{socket.gethostname()}-{os.getpid()}-{time.monotonic_ns() % 10**9}"
        env = dict(os.environ)
        path = getattr(self.config, "path", None)
        if path is not None and Path(path).exists():
            env["NERD_CONFIG_FILE"] = str(Path(path).absolute())
        with open(logs / f"{wid}.log", "ab") as errf:
            proc = subprocess.Popen([sys.executable, "-m", "nerdcli.jobs.local", "worker", "--id", wid,
                                     "--idle-timeout", str(idle)] + (["--auto"] if auto else []),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf,
                                    start_new_session=True, close_fds=True, env=env, cwd=jobs_dir())
        self.queue.register(wid, proc.pid, auto)  # now: a second `nerd run` right after counts it
        threading.Thread(target=proc.wait, daemon=True).start()  # reap it if it ends while we live
        return proc.pid

    def stop_workers(self, wait: float = 30.0) -> list[dict]:
        """Ask every worker to stop after its current task (SIGTERM re-queues a running task at once)."""
        stopped = self.workers()
        with self.queue.tx() as db:
            db.execute("UPDATE workers SET state = 'stopping'")
        for w in stopped:
            if w["host"] == socket.gethostname():
                try:
                    os.kill(w["pid"], signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_alive(w) for w in stopped if w["host"] == socket.gethostname()):
            time.sleep(0.1)
        self.reap()
        return stopped

    def queued(self) -> list[dict]:
        """Jobs the queue still works on, with their task counts."""
        self.reap()
        rows = self.queue.read("SELECT id, dir, ntasks, remaining, running, parallel, state, submitted FROM jobs "
                               "WHERE state != 'done' ORDER BY submitted")
        out = []
        for r in rows:
            if r[6] == "finalizing" and (Path(r[1]) / "result.json").exists():
                self.queue.finished(r[0])  # its finalize ended a moment ago
                continue
            out.append({"job": r[0], "tasks": r[2], "pending": r[3] - r[4], "running": r[4], "done": r[2] - r[3],
                        "parallel": r[5], "state": r[6], "submitted": r[7]})
        return out


# ---------------------------------------------------------------------------------------------- the worker


class Worker:
    """One process that runs tasks one after another until idle for ``idle_timeout`` s (0: forever)."""

    def __init__(self, wid: str, idle_timeout: float = 0.0, auto: bool = False) -> None:
        from ..service import working

        self.id = wid
        self.idle_timeout = idle_timeout
        self.backend = LocalBackend()
        self.queue = self.backend.queue
        self.queue.register(wid, os.getpid(), auto)  # a no-op when start_worker registered it already
        self.ctx = working.Context()
        self.current: tuple[str, int] | None = None
        self.control = working.TaskControl()
        self.stopping = threading.Event()
        self._specs: dict[str, JobSpec] = {}

    def _beat(self) -> None:
        while not self.stopping.is_set():
            try:
                cancelled, stop = self.queue.heartbeat(self.id, self.current, self.control.handle)
                if cancelled:
                    self.control.cancel()
                if stop:
                    self.stopping.set()
            except sqlite3.Error as e:
                log.warning("heartbeat: %s", e)
            self.stopping.wait(HEARTBEAT)

    def _term(self, *_a) -> None:
        self.stopping.set()
        self.requeue = True
        self.control.cancel()

    requeue = False

    def run(self) -> None:
        from ..service import working

        signal.signal(signal.SIGTERM, self._term)
        threading.Thread(target=self._beat, daemon=True).start()
        idle_since = time.monotonic()
        last_reap = 0.0
        sleep = 0.02
        try:
            while not self.stopping.is_set():
                if time.monotonic() - last_reap > 2.0:
                    self.backend.reap()
                    last_reap = time.monotonic()
                claim = self.queue.claim(self.id)
                if claim is None:
                    if self.idle_timeout and time.monotonic() - idle_since > self.idle_timeout:
                        break
                    self.stopping.wait(sleep)
                    sleep = min(sleep * 2, 0.5)
                    continue
                sleep = 0.02
                jid, jdir, idx, runs = claim
                self.control = working.TaskControl()
                if runs > 1:
                    self.control.name_suffix = f"-r{runs}"
                self.current = (jid, idx)
                spec = None
                try:
                    spec = self._specs.get(jid) or self._specs.setdefault(jid, JobDir(jdir).spec())
                    rec = working.run_task(jdir, idx, ctx=self.ctx, control_=self.control, spec=spec)
                except Exception as e:  # noqa: BLE001 - a broken job must not kill the worker
                    log.exception("task %d of job %s", idx, jid)
                    rec = working.cancelled_record(idx, f"internal error running the task: {e}", FAILED, 1)
                    try:
                        JobDir(jdir).write_task(rec)
                    except OSError:
                        pass  # its job directory is gone: only the queue remembers it
                self.current = None
                if self.requeue and rec.state == CANCELLED:
                    self._put_back(jid, idx)
                    break
                if rec.state == FAILED and spec is not None and spec.fail_fast:
                    try:
                        self.backend.cancel(Path(jdir))
                    except NerdError:
                        pass
                if self.queue.complete(self.id, jid, idx, rec.state):
                    self.backend._finalize(JobDir(jdir), ctx=self.ctx)
                    self._specs.pop(jid, None)
                idle_since = time.monotonic()
        finally:
            self.stopping.set()
            self.queue.unregister(self.id)
            self.ctx.close()

    def _put_back(self, jid: str, idx: int) -> None:
        """A task interrupted because this worker stops (not a user's cancel): pending again, no record."""
        jd = JobDir(read_json_dir(self.queue, jid))
        try:
            jd.task_path(idx).unlink()
        except FileNotFoundError:
            pass
        with self.queue.tx() as db:
            db.execute("UPDATE tasks SET state = 'pending', worker = NULL, handle = NULL, cancel = 0 "
                       "WHERE job = ? AND idx = ? AND worker = ?", (jid, idx, self.id))
            db.execute("UPDATE jobs SET running = running - 1 WHERE id = ?", (jid,))


def read_json_dir(queue: Queue, jid: str) -> Path:
    rows = queue.read("SELECT dir FROM jobs WHERE id = ?", (jid,))
    return Path(rows[0][0]) if rows else jobs_dir() / jid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nerdcli.jobs.local", description="Run a local nerd worker.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="run tasks from the local queue")
    w.add_argument("--id", default=None)
    w.add_argument("--idle-timeout", type=float, default=0.0, help="exit after this many idle seconds (0: never)")
    w.add_argument("--auto", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(message)s")
    wid = args.id or f"w-{socket.gethostname()}-{os.getpid()}"
    Worker(wid, args.idle_timeout, args.auto).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["LocalBackend", "Queue", "Worker", "queue_path", "read_json"]
