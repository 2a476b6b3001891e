"""The Slurm backend: a nerd job is one Slurm job array plus a dependent finalize job.

Two ways to reach Slurm, chosen by ``nerd_api_endpoint`` (or ``nerd run --backend``):

- ``slurm://`` — the command-line tools on this host (``sbatch``, ``scontrol``,
  ``scancel``; ``sacct`` when accounting is on), configured as usual
  (``SLURM_CONF`` or configless); the submitting environment is exported to the
  tasks (``sbatch --export=ALL``).
- ``slurm+http://HOST:PORT`` / ``slurm+https://…`` — slurmrestd's REST API
  (``/slurm/v0.0.38/…``, the newest API of Slurm 22.05; ``SLURM_REST_API`` picks
  another, e.g. ``v0.0.37``), authenticated with a JWT: ``SLURM_JWT`` from the
  environment (what ``scontrol token`` prints), else the ``jwt`` of the nerd
  session (``nerd login``; ``NERD_JWT`` overrides it). The user name sent with
  it is the token's ``sun`` claim (Slurm's own tokens carry it), else
  ``SLURM_USER_NAME``/``USER``. Only a small set of variables is sent as the
  tasks' environment (``PATH``, ``HOME``, ``LANG``, ``TMPDIR``, ``NERD_*``,
  ``AWS_*``, ``CONTAINERS_CONF`` …), not the client's whole environment.

Submitting a job of N tasks makes::

    sbatch --array=0-(N-1)[%P] --cpus-per-task --mem --time --output=JOBDIR/logs/%a.log --open-mode=append
        → python -m nerdcli.jobs.slurm task JOBDIR $SLURM_ARRAY_TASK_ID
    sbatch --dependency=afterany:<array> → python -m nerdcli.jobs.slurm finalize JOBDIR

Both run with this client's Python (``sys.executable``), so nerd must be
installed at the same path on the compute nodes (a shared software tree), and
the job directory (``NERD_HOME/jobs``) must be on a filesystem they share. The
task step is :func:`nerdcli.service.working.run_task` (the compute node stages
the inputs and uploads the outputs) plus a SIGTERM handler: when Slurm cancels
or times out a task it kills the task's container or process group and exits
without a record, so the record comes from Slurm's state (:func:`record_for`).
The finalize step writes the records of tasks that ended abnormally, then
commits the outputs once (:func:`nerdcli.service.working.finalize`); the last
task to finish also finalizes, so the job is usually done before the
finalize step starts.

``--mem`` is the task's ``--memory`` plus 256 MiB for the Python task wrapper;
``--time`` is the per-attempt limit times the attempts plus 2 minutes for
staging, rounded up to minutes (the wrapper enforces the exact per-attempt
limit itself, exit code 124); ``--fail-fast`` makes the first failing task
``scancel`` the array.

Errors: Slurm not reachable (no controller, no slurmrestd, tools missing) is a
``SlurmUnavailable`` — exit code 6, like an unreachable store; a token the
REST API rejects is a ``ConfigError`` (3); a job Slurm refuses (bad array size,
resources no node has) a ``UsageError`` (2); cancelling a finished job a
``Conflict`` (5).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from nerdfs import ConfigError, Conflict, NerdError, StoreError, UsageError

from .model import CANCELLED, FAILED, PENDING, RUNNING, JobDir, JobSpec, TaskRecord, now_iso

log = logging.getLogger(__name__)

REST_API_VERSION = "v0.0.38"
WRAPPER_MEMORY = 256 * 2**20  # what the Python task wrapper itself needs, added to --mem
STAGING_SECONDS = 120  # added to --time: staging inputs and uploading outputs
QUERY_TTL = 1.0  # seconds a Slurm answer is reused (status/wait poll several times a second)
REST_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME", "PYTHONPATH", "VIRTUAL_ENV",
                 "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "AWS_CA_BUNDLE", "CONTAINERS_CONF",
                 "DOCKER_HOST", "SLURM_CONF")
REST_ENV_PREFIXES = ("NERD_", "AWS_")

# Slurm job states (first word of JobState / job_state) that are not final.
LIVE_STATES = {"PENDING": PENDING, "REQUEUED": PENDING, "REQUEUE_FED": PENDING, "REQUEUE_HOLD": PENDING,
               "RESV_DEL_HOLD": PENDING, "SPECIAL_EXIT": PENDING, "CONFIGURING": RUNNING, "RUNNING": RUNNING,
               "COMPLETING": RUNNING, "SUSPENDED": RUNNING, "RESIZING": RUNNING, "SIGNALING": RUNNING,
               "STAGE_OUT": RUNNING, "STOPPED": RUNNING, "POWER_UP_NODE": PENDING, "UPDATE_DB": RUNNING}

UNREACHABLE_HINTS = ("unable to contact slurm controller", "could not establish a configuration source",
                     "socket timed out", "connection refused", "zero bytes were transmitted",
                     "communication connection failure", "protocol authentication error")


REST_AUTH_HINTS = ("zero bytes were transmitted", "protocol authentication error", "unable to load",
                   "invalid authentication credential", "authentication failure")


class SlurmUnavailable(StoreError):
    """Slurm cannot be reached: no controller answers, slurmrestd is down, or the tools are missing (exit 6)."""


@dataclass
class SlurmTask:
    """One array task as Slurm reports it."""

    index: int
    state: str  # Slurm's word: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, …
    exit_code: int | None = None  # the shell-style code (128+N for signal N)

    def __post_init__(self) -> None:
        # sacct says "CANCELLED by 0", squeue may add "+": keep the bare word
        self.state = self.state.split()[0].rstrip("+").upper() if self.state.strip() else ""


@dataclass
class SubmitOptions:
    name: str
    script: str
    chdir: str
    output: str
    array: str | None = None
    cpus_per_task: int | None = None
    mem_mb: int | None = None
    time_minutes: int | None = None
    dependency: str | None = None


# ---------------------------------------------------------------------------------------------- pure logic


def parse_indices(text: str) -> list[int]:
    """Array indices from Slurm's notation: ``5``, ``2-9%2``, ``1,3,7-9``, ``0-198:2``."""
    text = text.split("%", 1)[0].strip()
    out: list[int] = []
    if not text or text in ("N/A", "(null)"):
        return out
    for part in text.split(","):
        rng, _, step = part.partition(":")
        lo, _, hi = rng.partition("-")
        if not lo.isdigit():
            continue
        out.extend(range(int(lo), int(hi or lo) + 1, int(step) if step.isdigit() and int(step) > 0 else 1))
    return out


def shell_exit_code(code: int | None, signal_no: int | None = 0) -> int | None:
    """``N:S`` as a shell would report it: 128+S when killed by signal S, else N."""
    if code is None:
        return None
    return 128 + signal_no if signal_no else code


def record_for(index: int, state: str, exit_code: int | None, spec: JobSpec) -> TaskRecord | None:
    """The final record of a task that ended in Slurm state ``state`` without writing its own (None: not ended)."""
    word = (state or "").split()[0].rstrip("+").upper() if state else ""
    if not word or word in LIVE_STATES:
        return None
    now = now_iso()

    def rec(st: str, code: int | None, error: str) -> TaskRecord:
        return TaskRecord(index=index, state=st, exit_code=code, attempts=1, started=None, ended=now, error=error)

    if word == "CANCELLED":
        return rec(CANCELLED, None, "cancelled in Slurm (scancel)")
    if word == "TIMEOUT":
        return rec(FAILED, 124, "Slurm's time limit for the task was exceeded: killed by Slurm")
    if word == "OUT_OF_MEMORY":
        return rec(FAILED, 137, "out of memory: Slurm killed the task (raise --memory)")
    if word == "NODE_FAIL":
        return rec(FAILED, exit_code or 1, "the Slurm node running the task failed")
    if word in ("BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED"):
        return rec(FAILED, exit_code or 1, f"Slurm ended the task: {word}")
    if word == "FAILED":
        return rec(FAILED, exit_code or 1, f"the task wrapper exited with code {exit_code or 1} without "
                                           "recording a result — see the task's log")
    return rec(FAILED, exit_code or 1, f"the task ended in Slurm state {word} without recording a result — "
                                       "see the task's log")


def lost_record(index: int, job_id: str) -> TaskRecord:
    return TaskRecord(index=index, state=FAILED, exit_code=1, attempts=1, ended=now_iso(),
                      error=f"Slurm no longer knows job {job_id} and the task left no result (killed, or its "
                            "node died) — see the task's log")


def submit_options(job_dir: Path, spec: JobSpec) -> tuple[SubmitOptions, SubmitOptions]:
    """The array job and the finalize job (its dependency is filled in once the array's id is known)."""
    job_dir = Path(job_dir).resolve()
    if spec.tasks < 1:
        raise UsageError("a job needs at least one task")
    if spec.parallel is not None and spec.parallel < 1:
        raise UsageError(f"--parallel must be at least 1, not {spec.parallel}")
    array = f"0-{spec.tasks - 1}" + (f"%{spec.parallel}" if spec.parallel else "")
    cpus = max(1, math.ceil(spec.cpus)) if spec.cpus else None
    mem_mb = math.ceil((spec.memory + WRAPPER_MEMORY) / 2**20) if spec.memory else None
    minutes = None
    if spec.time_limit:
        minutes = math.ceil((spec.time_limit * (spec.retries + 1) + STAGING_SECONDS) / 60)
    py = shlex.quote(sys.executable)
    jd = shlex.quote(str(job_dir))
    task_script = ("#!/bin/sh\n"
                   f"# nerd job {job_dir.name}: one task of the array\n"
                   f'exec {py} -m nerdcli.jobs.slurm task {jd} "$SLURM_ARRAY_TASK_ID"\n')
    finalize_script = ("#!/bin/sh\n"
                       f"# nerd job {job_dir.name}: commit the outputs once every task has ended\n"
                       f"exec {py} -m nerdcli.jobs.slurm finalize {jd}\n")
    base = f"nerd-{job_dir.name}"
    tasks = SubmitOptions(name=base, script=task_script, chdir=str(job_dir), output=str(job_dir / "logs" / "%a.log"),
                          array=array, cpus_per_task=cpus, mem_mb=mem_mb, time_minutes=minutes)
    finalize = SubmitOptions(name=f"{base}-finalize", script=finalize_script, chdir=str(job_dir),
                             output=str(job_dir / "logs" / "finalize.log"), mem_mb=math.ceil(WRAPPER_MEMORY / 2**20) * 2,
                             time_minutes=60)
    return tasks, finalize


def _unreachable(message: str) -> bool:
    low = message.lower()
    return any(h in low for h in UNREACHABLE_HINTS)


# ---------------------------------------------------------------------------------------------- backends

_cache: dict[tuple[str, str], tuple[float, list[SlurmTask] | None]] = {}
_cache_lock = threading.Lock()


class SlurmBackend:
    """What both ways of reaching Slurm share; subclasses submit, query and cancel one Slurm job."""

    name = "slurm"
    endpoint = "slurm://"

    # -- transport (subclasses) ---------------------------------------------------------------------
    def _submit(self, opts: SubmitOptions) -> str:
        raise NotImplementedError

    def _query(self, job_id: str) -> list[SlurmTask] | None:
        """Every array task of ``job_id`` Slurm still knows; None if Slurm forgot the job."""
        raise NotImplementedError

    def _cancel(self, job_id: str) -> None:
        raise NotImplementedError

    # -- Backend -------------------------------------------------------------------------------------
    def submit(self, job_dir: Path, spec: JobSpec) -> dict:
        tasks, finalize = submit_options(Path(job_dir), spec)
        array_id = self._submit(tasks)
        finalize.dependency = f"afterany:{array_id}"
        try:
            finalize_id = self._submit(finalize)
        except NerdError:
            self._cancel(array_id)
            raise
        return {"array_job": array_id, "finalize_job": finalize_id, "endpoint": self.endpoint}

    def query(self, job_id: str, fresh: bool = False) -> list[SlurmTask] | None:
        """``_query`` through a short cache: ``nerd job wait`` asks several times a second."""
        key = (self.endpoint, job_id)
        now = time.monotonic()
        with _cache_lock:
            hit = _cache.get(key)
        if hit and not fresh and now - hit[0] < QUERY_TTL:
            return hit[1]
        tasks = self._query(job_id)
        with _cache_lock:
            _cache[key] = (time.monotonic(), tasks)
        return tasks

    def refresh(self, job_dir: Path) -> None:
        jd = JobDir(job_dir)
        if jd.result() is not None:
            return
        spec = jd.spec()
        self.record_abnormal(jd, spec)
        from ..service import working

        try:
            working.finalize_if_done(jd.path)
        except NerdError as e:
            log.warning("job %s: finalize failed: %s", jd.id, e)

    def record_abnormal(self, jd: JobDir, spec: JobSpec, fresh: bool = False) -> int:
        """Write tasks/<i>.json for tasks Slurm says ended but that left no record; how many were written."""
        missing = [i for i in range(spec.tasks) if not jd.task_path(i).exists()]
        if not missing:
            return 0
        array_id = str(jd.job().get("backend_ref", {}).get("array_job", ""))
        if not array_id:
            return 0
        tasks = self.query(array_id, fresh=fresh)
        by_index = {t.index: t for t in tasks or []}
        # Pending tasks are always listed (as a range); a task Slurm no longer lists has ended and its
        # record was purged (MinJobAge) — once nothing is left running it can only be recorded as lost.
        settled = not any(t.state in LIVE_STATES for t in tasks or [])
        written = 0
        for i in missing:
            t = by_index.get(i)
            if t is not None and t.state == "COMPLETED":
                continue  # the wrapper exits 0 only after writing a succeeded record: it is on its way
            if t is not None:
                rec = record_for(i, t.state, t.exit_code, spec)
            elif tasks is None or settled:
                rec = lost_record(i, array_id)
            else:
                continue
            # Slurm reports a final state only after the task's process exited, and the wrapper writes its
            # record before exiting: a record that appeared since we listed them is the true one. A fresh
            # directory listing (not a cached stat, on a shared filesystem) is the last word.
            if rec is not None and jd.task_path(i).name not in os.listdir(jd.path / "tasks"):
                jd.write_task(rec)
                written += 1
        return written

    def task_states(self, job_dir: Path) -> dict[int, str]:
        """pending/running of the tasks without a final record, as Slurm sees them."""
        jd = JobDir(job_dir)
        array_id = str(jd.job().get("backend_ref", {}).get("array_job", ""))
        if not array_id:
            return {}
        try:
            tasks = self.query(array_id)
        except NerdError as e:
            log.warning("job %s: %s", jd.id, e)
            return {}
        return {t.index: LIVE_STATES[t.state] for t in tasks or [] if t.state in LIVE_STATES}

    def cancel(self, job_dir: Path) -> None:
        jd = JobDir(job_dir)
        result = jd.result()
        if result is not None:
            raise Conflict(f"job {jd.id} already {result['state']} — nothing to cancel")
        array_id = str(jd.job().get("backend_ref", {}).get("array_job", ""))
        tasks = self.query(array_id, fresh=True) if array_id else None
        if not any(t.state in LIVE_STATES for t in tasks or []):
            self.refresh(jd.path)  # records the tasks that ended abnormally and commits, if not done yet
            raise Conflict(f"job {jd.id} already ended in Slurm — nothing to cancel")
        self._cancel(array_id)
        with _cache_lock:
            _cache.pop((self.endpoint, array_id), None)

    def workers(self) -> list[dict]:
        return []  # Slurm's nodes run the tasks: see sinfo

    def queued(self) -> list[dict]:
        """Unfinished jobs of this endpoint in this NERD_HOME, with task counts (the rows ``nerd queue list`` shows)."""
        from .model import jobs_dir

        root = jobs_dir()
        rows = []
        for d in sorted(root.glob("j-*")) if root.is_dir() else []:
            jd = JobDir(d)
            try:
                doc = jd.job()
            except NerdError:
                continue
            if doc.get("backend") != "slurm" or doc.get("backend_ref", {}).get("endpoint") != self.endpoint:
                continue
            if jd.result() is not None:
                continue
            spec = JobSpec.from_dict(doc["spec"])
            done = len(jd.tasks())
            live = self.task_states(d)
            running = sum(1 for s in live.values() if s == RUNNING)
            rows.append({"job": jd.id, "state": "active", "tasks": spec.tasks, "parallel": spec.parallel,
                         "pending": max(0, spec.tasks - done - running), "running": running, "done": done,
                         "slurm_job": doc.get("backend_ref", {}).get("array_job")})
        return rows


class SlurmCLI(SlurmBackend):
    """Slurm through its command-line tools on this host."""

    endpoint = "slurm://"

    def _run(self, cmd: list[str], what: str, stdin: str | None = None, timeout: float = 120) -> str:
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise SlurmUnavailable(f"Slurm not reachable: {cmd[0]} is not installed on this host — install "
                                   "slurm-client, or use nerd_api_endpoint slurm+http://HOST:PORT") from None
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(f"Slurm not reachable: {cmd[0]} got no answer within {timeout:g} s — "
                                   "check that slurmctld runs") from None
        if proc.returncode != 0:
            msg = " ".join((proc.stderr or proc.stdout).split()) or f"exit code {proc.returncode}"
            if _unreachable(msg):
                raise SlurmUnavailable(f"Slurm not reachable ({what}): {msg} — check that slurmctld runs and "
                                       "SLURM_CONF names its slurm.conf")
            raise _Refused(msg)
        return proc.stdout

    def _submit(self, opts: SubmitOptions) -> str:
        cmd = ["sbatch", "--parsable", f"--job-name={opts.name}", f"--chdir={opts.chdir}",
               f"--output={opts.output}", "--open-mode=append", "--export=ALL"]
        if opts.array:
            cmd.append(f"--array={opts.array}")
        if opts.cpus_per_task:
            cmd.append(f"--cpus-per-task={opts.cpus_per_task}")
        if opts.mem_mb:
            cmd.append(f"--mem={opts.mem_mb}M")
        if opts.time_minutes:
            cmd.append(f"--time={opts.time_minutes}")
        if opts.dependency:
            cmd.append(f"--dependency={opts.dependency}")
        try:
            out = self._run(cmd, "sbatch", stdin=opts.script)
        except _Refused as e:
            raise UsageError(f"Slurm refused the job: {e}") from None
        return out.strip().split(";", 1)[0]

    def _query(self, job_id: str) -> list[SlurmTask] | None:
        try:
            out = self._run(["scontrol", "show", "job", "-o", job_id], "scontrol show job")
        except _Refused as e:
            if "invalid job id" not in str(e).lower():
                raise StoreError(f"Slurm: scontrol show job {job_id}: {e}") from None
            return self._sacct(job_id)
        return parse_scontrol(out, job_id)

    def _sacct(self, job_id: str) -> list[SlurmTask] | None:
        """Jobs slurmctld has forgotten (after MinJobAge), from accounting if it is on; None otherwise."""
        if shutil.which("sacct") is None:
            return None
        try:
            out = self._run(["sacct", "-n", "-P", "-X", "-j", job_id, "--format=JobID,State,ExitCode"], "sacct")
        except (_Refused, SlurmUnavailable):
            return None
        tasks = parse_sacct(out, job_id)
        return tasks or None

    def _cancel(self, job_id: str) -> None:
        try:
            self._run(["scancel", job_id], "scancel")
        except _Refused as e:
            raise StoreError(f"Slurm: scancel {job_id}: {e}") from None


class _Refused(Exception):
    """A Slurm tool answered with an error (as opposed to not answering)."""


def _fields(line: str, *names: str) -> dict[str, str]:
    out = {}
    for n in names:
        m = re.search(rf"(?:^|\s){n}=(\S*)", line)
        if m:
            out[n] = m.group(1)
    return out


def parse_scontrol(text: str, job_id: str) -> list[SlurmTask]:
    """``scontrol show job -o`` of an array: one line per task (pending tasks share one line with a range)."""
    tasks = []
    for line in text.splitlines():
        f = _fields(line, "ArrayJobId", "ArrayTaskId", "JobState", "ExitCode")
        if f.get("ArrayJobId") != job_id or "ArrayTaskId" not in f:
            continue
        code, _, sig = f.get("ExitCode", "").partition(":")
        exit_code = shell_exit_code(int(code), int(sig or 0)) if code.isdigit() else None
        for i in parse_indices(f["ArrayTaskId"]):
            tasks.append(SlurmTask(i, f.get("JobState", ""), exit_code))
    return tasks


def parse_sacct(text: str, job_id: str) -> list[SlurmTask]:
    tasks = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 3 or not parts[0].startswith(f"{job_id}_"):
            continue
        code, _, sig = parts[2].partition(":")
        exit_code = shell_exit_code(int(code), int(sig or 0)) if code.isdigit() else None
        for i in parse_indices(parts[0].split("_", 1)[1].strip("[]")):
            tasks.append(SlurmTask(i, parts[1], exit_code))
    return tasks


class SlurmREST(SlurmBackend):
    """Slurm through slurmrestd, authenticated with a JWT."""

    def __init__(self, endpoint: str, config=None) -> None:
        scheme, _, rest = endpoint.partition("://")
        if not rest.strip("/"):
            raise ConfigError(f"nerd_api_endpoint {endpoint!r} names no host — use slurm+http://HOST:PORT")
        self.endpoint = endpoint.rstrip("/")
        self.url = f"{scheme.split('+', 1)[1]}://{rest.rstrip('/')}"
        self.version = os.environ.get("SLURM_REST_API") or REST_API_VERSION
        self.config = config
        self._client = None
        # set by nerdcli.client.batch when a login is configured: the login's JWT, refreshed if expired
        self.token_provider: Callable[[], str] | None = None

    # -- auth ----------------------------------------------------------------------------------------
    def _token(self) -> str:
        token = os.environ.get("SLURM_JWT", "").strip()
        if not token and self.token_provider is not None:
            token = self.token_provider()
        if not token:
            from ..session import Session

            token = Session.load().jwt
        if not token:
            raise ConfigError(f"no JWT for the Slurm REST API at {self.url}: set SLURM_JWT (e.g. from "
                              "`scontrol token`) or log in with `nerd login`")
        return token

    @staticmethod
    def _user(token: str) -> str:
        try:
            payload = token.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            if claims.get("sun"):
                return str(claims["sun"])
        except (IndexError, ValueError, AttributeError):
            pass
        user = os.environ.get("SLURM_USER_NAME") or os.environ.get("USER")
        if not user:
            import pwd

            user = pwd.getpwuid(os.getuid()).pw_name
        return user

    def _request(self, method: str, path: str, what: str, body: dict | None = None) -> tuple[int, dict]:
        import httpx

        token = self._token()
        headers = {"X-SLURM-USER-NAME": self._user(token), "X-SLURM-USER-TOKEN": token}
        url = f"{self.url}/slurm/{self.version}/{path}"
        if self._client is None:
            self._client = httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0))
        try:
            resp = self._client.request(method, url, headers=headers, json=body)
        except httpx.HTTPError as e:
            raise SlurmUnavailable(f"Slurm not reachable: the REST API at {self.url} does not answer "
                                   f"({type(e).__name__}: {e}) — check that slurmrestd runs there") from None
        try:
            doc = resp.json()
        except ValueError:
            doc = {}
        if resp.status_code in (401, 403):
            raise ConfigError(f"the Slurm REST API at {self.url} rejected the token for {what} (HTTP "
                              f"{resp.status_code}) — set a valid SLURM_JWT or run `nerd login`")
        if resp.status_code == 404 and not doc:
            raise SlurmUnavailable(f"Slurm REST API at {self.url} has no {self.version} API (HTTP 404) — set "
                                   "SLURM_REST_API to a version its slurmrestd offers (-s openapi/vX)")
        return resp.status_code, doc

    @staticmethod
    def _errors(doc: dict) -> list[dict]:
        return [e for e in doc.get("errors") or [] if isinstance(e, dict)]

    def _fail(self, status: int, doc: dict, what: str, refused=UsageError) -> NerdError:
        errs = self._errors(doc)
        msg = "; ".join(e.get("description") or e.get("error") or "" for e in errs if e) or f"HTTP {status}"
        low = msg.lower()
        if any(h in low for h in ("unable to contact slurm controller", "connection refused", "socket timed out")):
            return SlurmUnavailable(f"Slurm not reachable ({what} via {self.url}): {msg}")
        if any(h in low for h in REST_AUTH_HINTS) or "unspecified error" in " ".join(
                str(e.get("error")) for e in errs).lower():
            # slurmrestd answered, but slurmctld dropped the request: 22.05 reports a rejected token this way
            return ConfigError(f"the Slurm REST API at {self.url} could not {what} ({msg}) — the token may be "
                               "expired or wrong: set a valid SLURM_JWT or run `nerd login`")
        return refused(f"Slurm refused to {what}: {msg}")

    # -- transport ------------------------------------------------------------------------------------
    def _submit(self, opts: SubmitOptions) -> str:
        env = {k: v for k, v in os.environ.items() if k in REST_ENV_KEYS or k.startswith(REST_ENV_PREFIXES)}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        job: dict = {"name": opts.name, "current_working_directory": opts.chdir, "standard_output": opts.output,
                     "standard_error": opts.output, "open_mode": "append", "environment": env}
        if opts.array:
            job["array"] = opts.array
        if opts.cpus_per_task:
            job["cpus_per_task"] = opts.cpus_per_task
        if opts.mem_mb:
            job["memory_per_node"] = opts.mem_mb
        if opts.time_minutes:
            job["time_limit"] = opts.time_minutes
        if opts.dependency:
            job["dependency"] = opts.dependency
        status, doc = self._request("POST", "job/submit", "submit the job", {"script": opts.script, "job": job})
        if status != 200 or self._errors(doc) or not doc.get("job_id"):
            raise self._fail(status, doc, "submit the job")
        return str(doc["job_id"])

    def _query(self, job_id: str) -> list[SlurmTask] | None:
        status, doc = self._request("GET", f"job/{job_id}", f"show job {job_id}")
        errs = self._errors(doc)
        if any(e.get("error_number") == 2017 or "invalid job id" in str(e.get("error", "")).lower() for e in errs):
            return None  # slurmctld forgot it (MinJobAge)
        if status != 200 or errs:
            raise self._fail(status, doc, f"show job {job_id}", refused=StoreError)
        return parse_rest_jobs(doc.get("jobs") or [], job_id)

    def _cancel(self, job_id: str) -> None:
        status, doc = self._request("DELETE", f"job/{job_id}", f"cancel job {job_id}")
        if status != 200 or self._errors(doc):
            raise self._fail(status, doc, f"cancel job {job_id}", refused=StoreError)


def parse_rest_jobs(jobs: Iterable[dict], job_id: str) -> list[SlurmTask]:
    """``GET /job/{id}`` of an array: ``exit_code`` is the raw wait status; pending tasks share a range."""
    tasks = []
    for j in jobs:
        if str(j.get("array_job_id")) != job_id:
            continue
        raw = j.get("exit_code")
        exit_code = None
        if isinstance(raw, int):
            exit_code = shell_exit_code(raw >> 8, raw & 0x7F)
        state = str(j.get("job_state") or "")
        indices = parse_indices(str(j.get("array_task_string") or "")) if j.get("array_task_string") else []
        if not indices and j.get("array_task_id") is not None:
            indices = [int(j["array_task_id"])]
        tasks.extend(SlurmTask(i, state, exit_code) for i in indices)
    return tasks


def open_slurm(endpoint: str, config=None) -> SlurmBackend:
    """The backend for a ``slurm://`` or ``slurm+http(s)://host:port`` endpoint."""
    ep = (endpoint or "").strip()
    if ep in ("slurm", "slurm://") or ep.startswith("slurm://"):
        return SlurmCLI()
    if ep.startswith(("slurm+http://", "slurm+https://")):
        return SlurmREST(ep, config)
    raise ConfigError(f"nerd_api_endpoint {ep!r} is not a Slurm endpoint — use slurm:// or slurm+http(s)://HOST:PORT")


# ---------------------------------------------------------------------------------------------- compute side


def run_task_step(job_dir: str, index: int) -> int:
    """The array task: run it with :func:`working.run_task`; on SIGTERM (scancel, Slurm's time limit) kill the
    task's container or processes and exit at once without a record (Slurm's state says why it ended)."""
    from ..service import working

    control = working.TaskControl()

    def on_term(signum, _frame) -> None:
        try:
            control.cancel()
        finally:
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    rec = working.run_task(job_dir, index, control_=control)
    spec = JobDir(job_dir).spec()
    if rec.state == FAILED and spec.fail_fast and os.environ.get("SLURM_ARRAY_JOB_ID"):
        print(f"nerd: task {index} failed and the job is --fail-fast: cancelling the other tasks", file=sys.stderr)
        subprocess.run(["scancel", os.environ["SLURM_ARRAY_JOB_ID"]], stderr=subprocess.DEVNULL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        working.finalize_if_done(job_dir)
    except NerdError as e:
        print(f"nerd: finalize: {e}", file=sys.stderr)
    return 0 if rec.state == "succeeded" else (rec.exit_code or 1)


def finalize_step(job_dir: str) -> int:
    """The dependent job (every array task has ended): record the tasks Slurm ended abnormally, then commit.

    Slurm's state comes from the command-line tools of the compute node; without them a task with no record
    is recorded as lost.
    """
    from ..service import working

    jd = JobDir(job_dir)
    if jd.result() is None:
        spec = jd.spec()
        backend = SlurmCLI()
        try:
            backend.record_abnormal(jd, spec, fresh=True)
        except NerdError as e:
            print(f"nerd: cannot ask Slurm about the tasks ({e}); recording the ones without a result as lost",
                  file=sys.stderr)
            array_id = str(jd.job().get("backend_ref", {}).get("array_job", "?"))
            for i in range(spec.tasks):
                if not jd.task_path(i).exists():
                    jd.write_task(lost_record(i, array_id))
    result = working.finalize(job_dir)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``task JOBDIR INDEX`` | ``finalize JOBDIR``: what the Slurm batch scripts run."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="nerd: %(message)s")
    try:
        if len(args) == 3 and args[0] == "task" and args[2].isdigit():
            return run_task_step(args[1], int(args[2]))
        if len(args) == 2 and args[0] == "finalize":
            return finalize_step(args[1])
    except NerdError as e:
        print(f"nerd: {e}", file=sys.stderr)
        return e.exit_code
    print("usage: python -m nerdcli.jobs.slurm task JOBDIR INDEX | finalize JOBDIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["SlurmBackend", "SlurmCLI", "SlurmREST", "SlurmUnavailable", "open_slurm", "record_for",
           "parse_indices", "parse_scontrol", "parse_rest_jobs", "submit_options", "REST_API_VERSION"]
