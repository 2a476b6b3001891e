"""The compute side of a job: run one task, and finalize the job once every task ended.

Backend-independent: the local worker calls :func:`run_task` in-process (with a
:class:`Context` kept across tasks), a Slurm batch script calls it as::

    python -m nerdcli.service.working task JOBDIR INDEX     # runs it; finalizes if it was the last
    python -m nerdcli.service.working finalize JOBDIR

A task attempt: stage the inputs (a nerdfs mount of the same store on this
host shows every snapshot at ``MNT/.snapshots/<ds>/<id>/``: used directly,
otherwise the snapshot subtree is restored once into a cache dir shared by
the job's tasks), make an empty directory per output, run the command
(container or plain process), and on success upload each output directory
(deduplicated; no commit, just the tree id) and write ``tasks/<i>.json``.
:func:`finalize` commits one snapshot per output dataset whose entries are
``task-<i>`` → that task's tree.

Where the task sees its data:

- containers (podman, docker): inputs bind-mounted read-only at their DEST,
  outputs read-write at theirs;
- ``process`` runtime: the command runs on the host in a fresh work directory;
  DEST ``/data`` becomes ``<work>/data`` (inputs are symlinks to the read-only
  source). Both runtimes set ``NERD_INPUT``/``NERD_OUTPUT`` (the first input and
  output), ``NERD_INPUT_<k>``/``NERD_OUTPUT_<k>`` (each, in command-line order),
  ``NERD_TASK_INDEX`` and ``NERD_JOB_ID``; so ``sh -c 'wc -l $NERD_INPUT/* > $NERD_OUTPUT/n'``
  runs the same in both.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nerdfs import Archiver, Datasets, NerdError, NotFound, Repository, Restorer, S3Options, UsageError
from nerdfs.objects import DIR, Entry, Tree
from nerdfs.settings import nerd_home

from ..config import Config
from ..jobs.model import (CANCELLED, FAILED, FINAL_STATES, SUCCEEDED, InputSpec, JobDir, JobSpec, TaskRecord,
                          job_state, now_iso)

log = logging.getLogger(__name__)

OOM_EXIT = 137  # SIGKILL: what the kernel's OOM killer leaves
TIMEOUT_EXIT = 124  # as timeout(1)
NOT_FOUND_EXIT = 127
CANNOT_EXEC_EXIT = 126


# ---------------------------------------------------------------------------------------------- mounts


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 0 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def nerdfs_mounts() -> list[Path]:
    """Mount points of nerdfs filesystems on this host (from /proc/self/mountinfo, without stat'ing them)."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        if post.split(" ", 1)[0] == "fuse.nerdfs":
            found.append(Path(_unescape(pre.split(" ")[4])))
    return found


def mount_of(path: str | os.PathLike) -> tuple[Path, str, str] | None:
    """``(mountpoint, dataset, subpath)`` when ``path`` lies inside a nerdfs mount's dataset."""
    p = Path(os.path.abspath(path))
    for mnt in sorted(nerdfs_mounts(), key=lambda m: len(str(m)), reverse=True):
        if p == mnt or mnt in p.parents:
            rel = p.relative_to(mnt).parts
            if not rel:
                raise UsageError(f"input {path} is the mount point itself — name a dataset inside it, e.g. {mnt}/DATASET")
            if rel[0] == ".snapshots":
                if len(rel) < 3:
                    raise UsageError(f"input {path}: name a snapshot, e.g. {mnt}/.snapshots/DATASET/ID")
                return mnt, rel[1] + "@" + rel[2], "/".join(rel[3:])
            return mnt, rel[0], "/".join(rel[1:])
    return None


def _daemon_listens(mnt: Path) -> bool:
    """Whether a daemon accepts connections on the mount's control socket, without touching the mount
    (mountinfo paths are canonical already; resolving one would stat a possibly hung mount)."""
    from nerdfs import control  # not at import: trio costs every task wrapper ~50 ms

    return control.daemon_running(mnt, canonical=True)


def same_store(a: str, b: str) -> bool:
    if a.startswith("file://") and b.startswith("file://"):
        return os.path.realpath(a[7:]) == os.path.realpath(b[7:])
    return a.rstrip("/") == b.rstrip("/")


# ---------------------------------------------------------------------------------------------- context


class Context:
    """What a worker keeps between tasks: open repositories, the mounts of this host."""

    MOUNT_TTL = 30.0
    PROBE_TIMEOUT = 3.0  # a mount whose daemon does not answer within this is skipped from then on

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config.load(os.environ.get("NERD_CONFIG_FILE"))
        self._repos: dict[str, Repository] = {}
        self._mounts: tuple[float, list[tuple[Path, str]]] = (0.0, [])
        self._hung: set[Path] = set()
        self._lock = threading.Lock()

    def repo(self, spec: JobSpec) -> Repository:
        with self._lock:
            r = self._repos.get(spec.store)
            if r is None:
                ds = self.config.datasets
                s3 = S3Options(**spec.s3) if spec.s3 else ds.s3
                r = Repository.open(spec.store, s3=s3, cache_dir=ds.cache_path(), cache_size=ds.cache_size)
                self._repos[spec.store] = r
            return r

    def mounts(self, store: str) -> list[Path]:
        """Live nerdfs mounts of ``store`` on this host (asked once per MOUNT_TTL seconds)."""
        at, known = self._mounts
        if time.monotonic() - at > self.MOUNT_TTL:
            probes = [m for m in nerdfs_mounts() if m not in self._hung and _daemon_listens(m)]
            found: dict[Path, str] = {}
            threads = [threading.Thread(target=self._probe, args=(m, found), daemon=True) for m in probes]
            for t in threads:
                t.start()
            deadline = time.monotonic() + self.PROBE_TIMEOUT
            for m, t in zip(probes, threads):
                t.join(max(0.0, deadline - time.monotonic()))
                if t.is_alive():
                    # a hung mount (even resolving its control socket stats the mount point): never again
                    log.warning("nerdfs mount %s does not answer: ignored", m)
                    self._hung.add(m)
            known = [(m, found[m]) for m in probes if m in found]
            self._mounts = (time.monotonic(), known)
        return [m for m, s in known if same_store(s, store)]

    @staticmethod
    def _probe(mnt: Path, found: dict) -> None:
        from nerdfs import control

        try:
            found[mnt] = control.call(mnt, {"op": "status"}, timeout=5)["store"]
        except (NerdError, KeyError, OSError) as e:
            log.debug("mount %s: %s", mnt, e)

    def close(self) -> None:
        for r in self._repos.values():
            r.close()
        self._repos.clear()


class TaskControl:
    """Lets another thread cancel a running attempt (kills its process group or container)."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._kill: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self.handle: str | None = None  # "pid:<pgid>" or "<runtime>:<container>:<pid>": what to kill if the worker dies
        # a re-run of a task whose worker died gets fresh container names ("-r2"): the old container's
        # removal must not race the new one for its name
        self.name_suffix = ""

    def cancel(self) -> None:
        self.cancelled.set()
        with self._lock:
            kill = self._kill
        if kill is not None:
            kill()

    def _arm(self, kill: Callable[[], None] | None) -> None:
        with self._lock:
            self._kill = kill
        if kill is not None and self.cancelled.is_set():
            kill()


# ---------------------------------------------------------------------------------------------- inputs


def _subtree(repo: Repository, tree_id: str, path: str, what: str) -> str:
    for part in [p for p in path.split("/") if p]:
        entry = next((e for e in repo.get_tree(tree_id).entries if e.name == part), None)
        if entry is None:
            raise NotFound(f"{what}: no {path!r} in the snapshot")
        if entry.kind != DIR:
            raise UsageError(f"{what}: {path!r} is not a directory — inputs are directories")
        tree_id = entry.tree
    return tree_id


def input_cache_dir() -> Path:
    return Path(os.environ.get("NERD_INPUT_CACHE") or nerd_home() / "jobs" / "cache")


def stage_input(ctx: Context, spec: JobSpec, inp: InputSpec) -> Path:
    """A local read-only directory holding the input: the mount's snapshot view, or a restored cache copy."""
    for mnt in ctx.mounts(spec.store):
        view = mnt / ".snapshots" / inp.dataset / inp.snapshot
        if inp.path:
            view = view / inp.path
        try:
            if view.is_dir():
                return view
        except OSError:
            pass
    key = hashlib.sha256(f"{spec.store}\0{inp.snapshot}\0{inp.path}".encode()).hexdigest()[:20]
    root = input_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{inp.dataset}-{inp.snapshot[:12]}-{key}"
    if target.is_dir():
        return target
    with open(root / f".{target.name}.lock", "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)  # one task of the job restores it, the others wait and reuse it
        if target.is_dir():
            return target
        repo = ctx.repo(spec)
        snap = repo.get_snapshot(inp.snapshot)
        tree = _subtree(repo, snap.tree, inp.path, f"input {inp.dataset}@{inp.snapshot[:12]}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        try:
            Restorer(repo, threads=ctx.config.datasets.threads).restore(tree, tmp, force=True)
            os.chmod(tmp, 0o755)  # mkdtemp made it private; containers may run as another user
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


# ---------------------------------------------------------------------------------------------- running


@dataclass
class Attempt:
    exit_code: int
    error: str | None = None
    cancelled: bool = False
    outputs: dict[str, Path] = field(default_factory=dict)


def _rel(dest: str) -> str:
    rel = os.path.normpath("/" + dest).lstrip("/")
    if not rel:
        raise UsageError(f"destination {dest!r} must not be / — give a directory such as /data")
    return rel


def task_env(spec: JobSpec, index: int, job_id: str, ins: list[str], outs: list[str]) -> dict[str, str]:
    env = {"NERD_TASK_INDEX": str(index), "NERD_JOB_ID": job_id, "NERD_TASKS": str(spec.tasks)}
    for k, p in enumerate(ins):
        env[f"NERD_INPUT_{k}"] = p
    for k, p in enumerate(outs):
        env[f"NERD_OUTPUT_{k}"] = p
    if ins:
        env["NERD_INPUT"] = ins[0]
    if outs:
        env["NERD_OUTPUT"] = outs[0]
    env.update(spec.env)
    return env


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 2048))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1].strip()[:300] if lines else ""
    except OSError:
        return ""


def _wait(proc: subprocess.Popen, limit: int | None, kill: Callable[[], None]) -> tuple[int, bool]:
    """The exit code, and whether the time limit killed it."""
    try:
        return proc.wait(timeout=limit), False
    except subprocess.TimeoutExpired:
        kill()
        return proc.wait(), True


_HOST_ENV: dict[str, str] | None = None


def _host_env() -> dict[str, str]:
    """This process's environment, copied once (os.environ decodes every variable on each copy)."""
    global _HOST_ENV
    if _HOST_ENV is None:
        _HOST_ENV = dict(os.environ)
    return _HOST_ENV


def _kill_group(proc: subprocess.Popen) -> Callable[[], None]:
    def kill() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return kill


def _run_process(spec: JobSpec, index: int, job_id: str, work: Path, sources: list[Path], logf,
                 control_: TaskControl, args: list[str]) -> Attempt:
    ins, outs = [], {}
    for inp, src in zip(spec.inputs, sources):
        p = work / _rel(inp.dest)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(src, target_is_directory=True)
        ins.append(str(p))
    for o in spec.outputs:
        p = work / _rel(o.dest)
        p.mkdir(parents=True, exist_ok=True)
        outs[o.dataset] = p
    env = {**_host_env(), **task_env(spec, index, job_id, ins, [str(p) for p in outs.values()]),
           "NERD_WORK_DIR": str(work)}
    argv = [spec.image, *spec.command, *args] if spec.image else [*spec.command, *args]
    try:
        proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except FileNotFoundError:
        return Attempt(NOT_FOUND_EXIT, f"command not found: {argv[0]}")
    except PermissionError:
        return Attempt(CANNOT_EXEC_EXIT, f"command cannot be run (permission denied): {argv[0]}")
    except OSError as e:
        return Attempt(CANNOT_EXEC_EXIT, f"command {argv[0]} cannot be run: {e.strerror}")
    if spec.memory:
        # an address-space limit (no preexec_fn: unsafe with the worker's threads); children inherit it
        try:
            resource.prlimit(proc.pid, resource.RLIMIT_AS, (spec.memory, spec.memory))
        except (ProcessLookupError, PermissionError, ValueError):
            pass
    code, timed_out = _supervise(proc, f"pid:{proc.pid}", _kill_group(proc), control_, spec.time_limit)
    return _judge(code, timed_out, control_, spec, outs)


def _supervise(proc: subprocess.Popen, handle: str, kill: Callable[[], None], control_: TaskControl,
               limit: int | None) -> tuple[int, bool]:
    """Wait for a task's process with ``kill`` armed for cancellation: (exit code, timed out)."""
    control_.handle = handle
    control_._arm(kill)
    try:
        return _wait(proc, limit, kill)
    finally:
        control_._arm(None)


def _judge(code: int, timed_out: bool, control_: TaskControl, spec: JobSpec, outs: dict[str, Path],
           oom: bool = False) -> Attempt:
    if code < 0:
        code = 128 - code  # killed by signal N: report 128+N like a shell
    if control_.cancelled.is_set():
        return Attempt(code, "cancelled", cancelled=True)
    if timed_out:
        return Attempt(TIMEOUT_EXIT, f"time limit of {spec.time_limit} s exceeded: killed")
    if oom:
        return Attempt(OOM_EXIT, f"out of memory: the task exceeded its memory limit of {spec.memory} bytes (killed)")
    if code != 0:
        return Attempt(code, f"exited with code {code}")
    return Attempt(0, outputs=outs)


def _container_name(job_id: str, index: int, attempt: int, suffix: str = "") -> str:
    return f"nerd-{job_id}-{index}-{attempt}{suffix}"


def container_argv(spec: JobSpec, index: int, job_id: str, name: str, sources: list[Path],
                   outs: dict[str, Path], args: list[str]) -> list[str]:
    argv = [spec.runtime, "run", "--name", name, "--pull=never", "-i=false"]
    for inp, src in zip(spec.inputs, sources):
        argv += ["-v", f"{src}:{'/' + _rel(inp.dest)}:ro"]
    for o in spec.outputs:
        argv += ["-v", f"{outs[o.dataset]}:{'/' + _rel(o.dest)}"]
    env = task_env(spec, index, job_id, ["/" + _rel(i.dest) for i in spec.inputs],
                   ["/" + _rel(o.dest) for o in spec.outputs])
    for k, v in env.items():
        argv += ["-e", f"{k}={v}"]
    if spec.cpus:
        argv += ["--cpus", f"{spec.cpus:g}"]
    if spec.memory:
        argv += ["--memory", str(spec.memory), "--memory-swap", str(spec.memory)]
    return argv + [spec.image, *spec.command, *args]


def _run_container(spec: JobSpec, index: int, job_id: str, work: Path, sources: list[Path], logf,
                   control_: TaskControl, args: list[str], attempt: int) -> Attempt:
    outs = {}
    for k, o in enumerate(spec.outputs):
        p = work / f"output-{k}"
        p.mkdir(exist_ok=True)
        p.chmod(0o777)  # the container's user may not be ours
        outs[o.dataset] = p
    name = _container_name(job_id, index, attempt, control_.name_suffix)
    rt = spec.runtime
    argv = container_argv(spec, index, job_id, name, sources, outs, args)
    if shutil.which(rt) is None:
        return Attempt(NOT_FOUND_EXIT, f"container runtime {rt} is not installed — install it or use "
                                       "--runtime process")

    def kill() -> None:
        subprocess.run([rt, "rm", "-f", "-t", "0", name] if rt == "podman" else [rt, "rm", "-f", name],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # cwd: podman's conmon leaves files (an "oom" marker) in its working directory
    proc = subprocess.Popen(argv, cwd=work, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                            start_new_session=True)
    code, timed_out = _supervise(proc, f"{rt}:{name}:{proc.pid}", kill, control_, spec.time_limit)
    oom = False
    try:
        if code == OOM_EXIT and not control_.cancelled.is_set() and not timed_out:
            r = subprocess.run([rt, "inspect", "--format", "{{.State.OOMKilled}}", name], capture_output=True,
                               text=True)
            oom = r.stdout.strip() == "true" or bool(spec.memory)
    finally:
        subprocess.run([rt, "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = _judge(code, timed_out, control_, spec, outs, oom)
    if code == 125 and not result.cancelled:
        result.error = f"{rt} could not start the task: {_last_line(logf_path(logf)) or 'see the log'}"
    elif code == 127 and not result.cancelled:
        result.error = f"command not found in image {spec.image}: {(spec.command or ['(image default)'])[0]}"
    elif code == 126 and not result.cancelled:
        result.error = f"command cannot be run in image {spec.image}: {(spec.command or ['(default)'])[0]}"
    return result


def kill_handle(handle: str | None) -> None:
    """Kill what a :attr:`TaskControl.handle` names (a task left behind by a worker that died)."""
    if not handle:
        return
    kind, _, what = handle.partition(":")
    if kind == "pid":
        try:
            os.killpg(int(what), signal.SIGKILL)
        except (ProcessLookupError, PermissionError, ValueError):
            pass
    elif kind in ("podman", "docker"):
        name, _, pid = what.partition(":")
        if pid.isdigit():  # the runtime's client process first, so it does not outlive its container
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if shutil.which(kind):
            subprocess.run([kind, "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def remove_task_containers(runtime: str, job_id: str, index: int) -> None:
    """Remove every container of one task, by name: a worker killed right after starting one may not
    have recorded its handle yet."""
    if runtime not in ("podman", "docker") or not shutil.which(runtime):
        return
    r = subprocess.run([runtime, "ps", "-a", "--filter", f"name=^nerd-{job_id}-{index}-", "--format",
                        "{{.Names}}"], capture_output=True, text=True)
    for name in r.stdout.split():
        subprocess.run([runtime, "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def logf_path(logf) -> Path:
    return Path(logf.name)


def work_root() -> Path:
    return Path(os.environ.get("NERD_WORK_DIR") or tempfile.gettempdir())


_WORK_JOB: dict[Path, str] = {}  # work directory -> the job whose task used it last


def _fresh_work_dir(job_id: str) -> Path:
    """An empty work directory at a path this process/thread reuses for every task.

    A stable path keeps the index's scan cache (one entry per uploaded file
    path) from growing by one entry per output file of every task ever run;
    and between tasks of one job the output directories are kept (emptied):
    removing and re-creating directories was the slowest step of a tiny task
    (rmdir on a busy ext4 with online discard took milliseconds).
    """
    work = work_root() / f"nerd-work-{os.getpid()}-{threading.get_ident() % 1_000_000}"
    if _WORK_JOB.get(work) == job_id and work.is_dir():
        return work  # emptied by _reset_work at the end of the previous task
    if work.exists() or work.is_symlink():
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o755)
    _WORK_JOB[work] = job_id
    return work


def _reset_work(work: Path, keep: list[Path]) -> None:
    """Empty the work directory for the next task, keeping the (emptied) directories in ``keep``."""
    keep_set = set(keep)
    ancestors = {a for k in keep for a in k.parents}
    try:
        _prune(work, keep_set, ancestors)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)
        _WORK_JOB.pop(work, None)


def _prune(d: Path, keep: set[Path], ancestors: set[Path]) -> None:
    with os.scandir(d) as it:
        entries = list(it)
    for e in entries:
        p = Path(e.path)
        if e.is_dir(follow_symlinks=False):
            if p in keep:
                _prune(p, set(), set())  # an output directory: everything in it goes
            elif p in ancestors:
                _prune(p, keep, ancestors)
            else:
                shutil.rmtree(p)
        else:
            os.unlink(p)


def _upload_outputs(ctx: Context, spec: JobSpec, outs: dict[str, Path]) -> dict[str, str]:
    """Each non-empty output directory → its tree id in the store (deduplicated, not committed)."""
    trees = {}
    repo = None
    for ds, path in outs.items():
        with os.scandir(path) as it:
            if next(it, None) is None:
                continue  # no output: absent from the snapshot
        repo = repo or ctx.repo(spec)
        trees[ds], _ = Archiver(repo, threads=ctx.config.datasets.threads).archive(path)
    if repo is not None:
        repo.flush()
    return trees


def run_task(job_dir: str | os.PathLike, index: int, *, ctx: Context | None = None,
             control_: TaskControl | None = None, spec: JobSpec | None = None) -> TaskRecord:
    """Run task ``index`` of the job (retrying up to ``spec.retries`` times) and write ``tasks/<index>.json``."""
    jd = JobDir(job_dir)
    spec = spec or jd.spec()
    if not 0 <= index < spec.tasks:
        raise UsageError(f"job {jd.id} has no task {index} (it has {spec.tasks})")
    own = ctx is None
    ctx = ctx or Context()
    control_ = control_ or TaskControl()
    rec = TaskRecord(index=index, state=FAILED, started=now_iso())
    try:
        with open(jd.log_path(index), "ab") as logf:
            try:
                sources = [stage_input(ctx, spec, i) for i in spec.inputs]
            except NerdError as e:
                rec.exit_code, rec.error, rec.attempts = 1, f"staging inputs failed: {e}", 1
                logf.write(f"nerd: {rec.error}\n".encode())
                return _finish(jd, rec)
            for attempt in range(1, spec.retries + 2):
                rec.attempts = attempt
                if attempt > 1:
                    logf.write(f"nerd: attempt {attempt} of {spec.retries + 1}\n".encode())
                    logf.flush()
                work = _fresh_work_dir(jd.id)
                a = None
                try:
                    args = spec.task_args[index]
                    if spec.runtime == "process":
                        a = _run_process(spec, index, jd.id, work, sources, logf, control_, args)
                    else:
                        a = _run_container(spec, index, jd.id, work, sources, logf, control_, args, attempt)
                    if a.cancelled:
                        rec.state, rec.exit_code, rec.error = CANCELLED, a.exit_code, "cancelled"
                        break
                    if a.exit_code == 0:
                        rec.outputs = _upload_outputs(ctx, spec, a.outputs)
                        rec.state, rec.exit_code, rec.error = SUCCEEDED, 0, None
                        break
                    rec.state, rec.exit_code, rec.error = FAILED, a.exit_code, a.error
                    logf.write(f"nerd: task {index} attempt {attempt}: {a.error}\n".encode())
                    logf.flush()
                    if control_.cancelled.is_set():
                        rec.state = CANCELLED
                        break
                finally:
                    _reset_work(work, list(a.outputs.values()) if a is not None else [])
        return _finish(jd, rec)
    finally:
        if own:
            ctx.close()


def _finish(jd: JobDir, rec: TaskRecord) -> TaskRecord:
    rec.ended = now_iso()
    jd.write_task(rec)
    return rec


def cancelled_record(index: int, error: str = "cancelled", state: str = CANCELLED,
                     exit_code: int | None = None) -> TaskRecord:
    """The record a backend writes for a task that never ran (or died without writing one)."""
    now = now_iso()
    return TaskRecord(index=index, state=state, exit_code=exit_code, attempts=0, started=None, ended=now,
                      error=error)


# ---------------------------------------------------------------------------------------------- finalize


def all_final(jd: JobDir, spec: JobSpec | None = None) -> bool:
    spec = spec or jd.spec()
    recs = jd.tasks()
    return len(recs) >= spec.tasks and all(r.state in FINAL_STATES for r in recs.values())


def finalize(job_dir: str | os.PathLike, *, ctx: Context | None = None) -> dict:
    """Commit each output dataset once (``task-<i>`` → the task's tree) and write result.json.

    Idempotent and safe to race: a file lock makes exactly one caller commit;
    later calls return the same result.
    """
    jd = JobDir(job_dir)
    done = jd.result()
    if done is not None:
        return done
    with open(jd.path / ".finalize.lock", "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        done = jd.result()
        if done is not None:
            return done
        spec = jd.spec()
        records = jd.tasks()
        missing = [i for i in range(spec.tasks) if i not in records or records[i].state not in FINAL_STATES]
        if missing:
            raise UsageError(f"job {jd.id}: {len(missing)} tasks have not ended yet (e.g. task {missing[0]})")
        own = ctx is None
        ctx = ctx or Context()
        try:
            state, code = job_state(records, spec.tasks)
            outputs = _commit_outputs(ctx, jd, spec, records)
            counts: dict[str, int] = {}
            for r in records.values():
                counts[r.state] = counts.get(r.state, 0) + 1
            failed = sorted((r for r in records.values() if r.state == FAILED), key=lambda r: (r.ended or "", r.index))
            result = {"state": state, "exit_code": code, "outputs": outputs, "tasks": counts,
                      "failed": [{"index": r.index, "exit_code": r.exit_code, "error": r.error} for r in failed[:10]],
                      "finished": now_iso()}
            jd.write_result(result)
            _refresh_mounts(ctx, spec)
        finally:
            if own:
                ctx.close()
        return result


def _commit_outputs(ctx: Context, jd: JobDir, spec: JobSpec, records: dict[int, TaskRecord]) -> dict[str, str]:
    outputs: dict[str, str] = {}
    datasets = list(dict.fromkeys(o.dataset for o in spec.outputs))
    if not datasets:
        return outputs
    repo = ctx.repo(spec)
    mtime = time.time_ns()
    for ds in datasets:
        entries = [Entry(name=f"task-{i}", kind=DIR, mode=0o755, mtime_ns=mtime, tree=r.outputs[ds])
                   for i, r in sorted(records.items()) if r.state == SUCCEEDED and r.outputs.get(ds)]
        if not entries:
            continue  # nothing succeeded with output: the dataset's head stays as it is
        tid, _ = repo.put_tree(Tree(entries))
        dsets = Datasets(repo)
        head = dsets.head(ds)
        sid, _ = dsets.commit(ds, tid, parent=head.snapshot if head else None,
                              message=f"job {jd.id}: {len(entries)} task outputs")
        outputs[ds] = sid
    repo.flush()
    return outputs


def _refresh_mounts(ctx: Context, spec: JobSpec) -> None:
    """Ask each mount of the store on this host to show the new snapshots (older mounts lack the op)."""
    from nerdfs import control

    for mnt in ctx.mounts(spec.store):
        try:
            control.call(mnt, {"op": "refresh"}, timeout=30)
        except UsageError:
            pass  # a daemon without the refresh op: it shows the snapshot on its next periodic refresh
        except NerdError as e:
            log.warning("mount %s: refresh failed: %s", mnt, e)


def finalize_if_done(job_dir: str | os.PathLike, *, ctx: Context | None = None) -> dict | None:
    """Finalize when every task has a final record (None otherwise): what the last task's wrapper calls."""
    jd = JobDir(job_dir)
    if jd.result() is None and not all_final(jd):
        return None
    return finalize(job_dir, ctx=ctx)


# ---------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``task JOBDIR INDEX`` (exit code: the task's) or ``finalize JOBDIR`` (exit code: the job's)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        if len(args) == 3 and args[0] == "task":
            rec = run_task(args[1], int(args[2]))
            print(json.dumps(rec.to_dict()))
            try:
                finalize_if_done(args[1])
            except NerdError as e:
                print(f"nerd: finalize: {e}", file=sys.stderr)
            return 0 if rec.state == SUCCEEDED else (rec.exit_code or 1)
        if len(args) == 2 and args[0] == "finalize":
            result = finalize(args[1])
            print(json.dumps(result))
            return int(result["exit_code"] or 0)
    except NerdError as e:
        print(f"nerd: {e}", file=sys.stderr)
        return e.exit_code
    except ValueError:
        pass
    print("usage: python -m nerdcli.service.working task JOBDIR INDEX | finalize JOBDIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["run_task", "finalize", "finalize_if_done", "all_final", "Context", "TaskControl", "stage_input",
           "nerdfs_mounts", "mount_of", "kill_handle", "cancelled_record", "container_argv", "task_env"]
