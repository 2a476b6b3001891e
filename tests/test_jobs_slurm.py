"""Jobs on a real single-node Slurm (the ``slurm`` session fixture), through ``sbatch`` and through slurmrestd:
the real ``nerd`` command, real array jobs, real task wrappers on the "compute node"."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nerdcli.jobs.model import CANCELLED, FAILED, JobSpec
from nerdcli.jobs.slurm import (SlurmCLI, parse_indices, parse_rest_jobs, parse_scontrol, record_for, shell_exit_code,
                                submit_options)


class SlurmNerd:
    """`nerd` in its own NERD_HOME and store, pointed at the test cluster."""

    def __init__(self, tmp: Path, slurm, backend: str = "slurm://") -> None:
        self.tmp, self.slurm, self.backend = tmp, slurm, backend
        self.home = tmp / "home"
        self.store = f"file://{tmp / 'store'}"
        self.extra: dict[str, str] = {}

    def env(self) -> dict:
        e = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "NERD_", "SLURM_"))}
        e.update(NERD_HOME=str(self.home), NERD_STORE=self.store, NERD_WORK_DIR=str(self.tmp), **self.slurm.env)
        e.update(self.extra)
        return e

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "nerdcli", *args], env=self.env(), capture_output=True,
                              text=True, timeout=timeout)

    def json(self, *args: str, code: int = 0, timeout: float = 300) -> dict:
        r = self.run("--output", "json", *args, timeout=timeout)
        assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
        return json.loads(r.stdout)

    def submit(self, *args: str, code: int = 0, timeout: float = 300) -> dict:
        return self.json("run", "--backend", self.backend, "--runtime", "process", *args, code=code, timeout=timeout)

    def download(self, spec: str, dest: Path) -> Path:
        self.json("dataset", "download", spec, str(dest))
        return dest

    def job_dir(self, job: str) -> Path:
        return self.home / "jobs" / job

    def array_id(self, job: str) -> str:
        return json.loads((self.job_dir(job) / "job.json").read_text())["backend_ref"]["array_job"]


@pytest.fixture
def snerd(tmp_path, slurm) -> SlurmNerd:
    return SlurmNerd(tmp_path, slurm)


@pytest.fixture
def rest_nerd(tmp_path, slurm) -> SlurmNerd:
    n = SlurmNerd(tmp_path, slurm, backend=slurm.rest_endpoint)
    n.extra["SLURM_JWT"] = slurm.token(lifespan=3600)
    return n


def one_line_error(r: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nerd: error: ") and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def wait_for(pred, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.2)


def slurm_states(slurm, array_id: str) -> list[str]:
    out = slurm.run("squeue", "-h", "-r", "-j", array_id, "--states=all", "-o", "%T", check=False).stdout
    return out.split()


# ------------------------------------------------------------------------------------------ pure logic


def test_slurm_notation_and_abnormal_states_map_to_task_records():
    assert parse_indices("5") == [5] and parse_indices("2-5%2") == [2, 3, 4, 5]
    assert parse_indices("1,3,7-9") == [1, 3, 7, 8, 9] and parse_indices("0-6:3") == [0, 3, 6]
    assert shell_exit_code(0, 9) == 137 and shell_exit_code(3, 0) == 3
    spec = JobSpec(name="x", image="sh")
    assert record_for(0, "RUNNING", None, spec) is None and record_for(0, "PENDING", None, spec) is None
    assert record_for(1, "CANCELLED by 0", None, spec).state == CANCELLED
    timeout = record_for(2, "TIMEOUT", 0, spec)
    assert (timeout.state, timeout.exit_code) == (FAILED, 124) and "time limit" in timeout.error
    oom = record_for(3, "OUT_OF_MEMORY", 0, spec)
    assert (oom.state, oom.exit_code) == (FAILED, 137) and "memory" in oom.error
    assert "node" in record_for(4, "NODE_FAIL", None, spec).error
    failed = record_for(5, "FAILED", 137, spec)
    assert (failed.state, failed.exit_code) == (FAILED, 137) and "without recording a result" in failed.error
    line = ("JobId=12 ArrayJobId=10 ArrayTaskId=2-5%2 ArrayTaskThrottle=2 JobName=n JobState=PENDING "
            "Reason=JobArrayTaskLimit ExitCode=0:0 RunTime=0\n"
            "JobId=11 ArrayJobId=10 ArrayTaskId=1 JobName=n JobState=FAILED Reason=NonZeroExitCode ExitCode=0:9\n")
    tasks = parse_scontrol(line, "10")
    assert [(t.index, t.state, t.exit_code) for t in tasks] == [(2, "PENDING", 0), (3, "PENDING", 0),
                                                                  (4, "PENDING", 0), (5, "PENDING", 0),
                                                                  (1, "FAILED", 137)]
    rest = parse_rest_jobs([{"array_job_id": 10, "array_task_id": 1, "job_state": "FAILED", "exit_code": 3 << 8,
                             "array_task_string": ""}], "10")
    assert [(t.index, t.exit_code) for t in rest] == [(1, 3)]


def test_records_come_from_slurm_only_for_tasks_that_ended_without_one(tmp_path):
    """Which tasks refresh records (a Slurm answer stands in for scontrol: this is the pure decision logic)."""
    from nerdcli.jobs.model import JobDir, TaskRecord
    from nerdcli.jobs.slurm import SlurmBackend, SlurmTask

    class Answer(SlurmBackend):
        endpoint = "test://"
        tasks: list | None = None

        def _query(self, job_id):
            return self.tasks

    spec = JobSpec(name="x", image="sh", task_args=[[]] * 5)
    jd = JobDir.create("j-test", spec, "slurm", root=tmp_path)
    doc = jd.job()
    doc["backend_ref"] = {"array_job": "7"}
    jd.write_job(doc)
    jd.write_task(TaskRecord(0, "succeeded", 0))  # its own record: never replaced
    backend = Answer()
    backend.tasks = [SlurmTask(0, "FAILED", 1), SlurmTask(1, "COMPLETED", 0), SlurmTask(2, "TIMEOUT", 0),
                     SlurmTask(4, "RUNNING")]  # 3: ended and purged, but task 4 still runs
    assert backend.record_abnormal(jd, spec, fresh=True) == 1
    assert jd.task(0).state == "succeeded" and jd.task(1) is None and jd.task(3) is None
    assert (jd.task(2).state, jd.task(2).exit_code) == ("failed", 124)
    backend.tasks = [SlurmTask(1, "COMPLETED", 0), SlurmTask(4, "CANCELLED by 0")]  # nothing runs: 3 is lost
    assert backend.record_abnormal(jd, spec, fresh=True) == 2
    assert "no longer" not in jd.task(4).error and jd.task(4).state == "cancelled"
    assert jd.task(3).state == "failed" and "left no result" in jd.task(3).error
    backend.tasks = None  # Slurm forgot the job: whatever is still missing is lost
    assert backend.record_abnormal(jd, spec, fresh=True) == 1 and jd.task(1).state == "failed"


def test_submit_options_cover_resources_and_the_compute_side_command(tmp_path):
    spec = JobSpec(name="x", image="sh", cpus=1.5, memory=512 * 2**20, time_limit=90, retries=1,
                   task_args=[[]] * 7, parallel=3)
    tasks, finalize = submit_options(tmp_path, spec)
    assert tasks.array == "0-6%3" and tasks.cpus_per_task == 2 and tasks.mem_mb == 512 + 256
    assert tasks.time_minutes == 5  # (2 attempts x 90 s + 120 s staging) rounded up to minutes
    assert tasks.output == f"{tmp_path}/logs/%a.log"
    assert f"{sys.executable} -m nerdcli.jobs.slurm task {tmp_path} \"$SLURM_ARRAY_TASK_ID\"" in tasks.script
    assert f"-m nerdcli.jobs.slurm finalize {tmp_path}" in finalize.script and finalize.array is None


# ------------------------------------------------------------------------------------------ sbatch


def test_two_hundred_task_array_commits_every_output(snerd, tmp_path):
    src = tmp_path / "params"
    src.mkdir()
    (src / "greeting").write_text("hello")
    started = time.monotonic()
    doc = snerd.submit("--array", "200", "--input", f"{src}:/in", "--output", "res:/out", "--wait", "sh", "--",
                       "-c", 'echo "$(cat "$NERD_INPUT/greeting") $NERD_TASK_INDEX" > "$NERD_OUTPUT/out.txt"')
    elapsed = time.monotonic() - started
    assert doc["state"] == "succeeded" and doc["exit_code"] == 0 and doc["counts"] == {"succeeded": 200}, doc
    assert doc["backend"] == "slurm"
    # Slurm ran it: one array of 200 tasks, all completed, plus the finalize job. The last task
    # commits the job before its own Slurm step has ended: give Slurm a moment to notice.
    deadline = time.monotonic() + 60
    while (states := slurm_states(snerd.slurm, snerd.array_id(doc["job"]))) != ["COMPLETED"] * 200:
        assert time.monotonic() < deadline and set(states) <= {"COMPLETED", "COMPLETING", "RUNNING"}, states
        time.sleep(0.5)
    log = snerd.json("dataset", "log", "res")["snapshots"]
    assert len(log) == 1 and log[0]["snapshot"] == doc["outputs"]["res"]  # committed once
    out = snerd.download("res", tmp_path / "res")
    assert sorted(os.listdir(out)) == sorted(f"task-{i}" for i in range(200))
    assert all((out / f"task-{i}" / "out.txt").read_text() == f"hello {i}\n" for i in range(200))
    print(f"200 tasks on Slurm in {elapsed:.1f} s")


def test_failing_task_fails_the_job_with_its_exit_code_and_keeps_logs(snerd, tmp_path):
    r = snerd.run("--output", "json", "run", "--backend", "slurm://", "--runtime", "process", "--array", "3",
                  "--output", "r:/o", "--wait", "sh", "--", "-c",
                  'echo "log of $NERD_TASK_INDEX"; [ "$NERD_TASK_INDEX" = 1 ] && exit 3; echo ok > "$NERD_OUTPUT/ok"')
    assert r.returncode == 3, r.stderr
    doc = json.loads(r.stdout)
    assert doc["state"] == "failed" and doc["exit_code"] == 3 and doc["counts"] == {"failed": 1, "succeeded": 2}
    assert doc["failed"][0]["index"] == 1 and "exited with code 3" in doc["failed"][0]["error"]
    assert sorted(os.listdir(snerd.download("r", tmp_path / "r"))) == ["task-0", "task-2"]
    logs = snerd.json("job", "logs", doc["job"], "--task", "1")["log"]
    assert "log of 1" in logs and "exited with code 3" in logs
    assert snerd.run("job", "wait", doc["job"]).returncode == 3


def test_a_task_whose_wrapper_dies_is_failed_from_slurms_state(snerd):
    """The wrapper killed (as by the OOM killer) writes no record: Slurm's FAILED 0:9 becomes exit code 137.

    Nobody polls the job: the dependent finalize job records the task and commits on its own."""
    job = snerd.submit("--array", "2", "--output", "r:/o", "sh", "--", "-c",
                       'echo ok > "$NERD_OUTPUT/ok"; [ "$NERD_TASK_INDEX" = 1 ] && kill -9 $PPID; sleep 1')["job"]
    result, flog = snerd.job_dir(job) / "result.json", snerd.job_dir(job) / "logs" / "finalize.log"
    # only the finalize job can commit here: no task wrapper sees every task ended, and nobody polls
    wait_for(lambda: flog.exists() and '"state": "failed"' in flog.read_text(), 60, "the finalize job's result")
    assert list(json.loads(result.read_text())["outputs"]) == ["r"]  # task 0's output is committed
    doc = snerd.json("job", "status", job)
    assert doc["state"] == "failed" and doc["exit_code"] == 137 and doc["counts"] == {"failed": 1, "succeeded": 1}
    [failed] = doc["failed"]
    assert failed["index"] == 1 and failed["exit_code"] == 137 and "without recording a result" in failed["error"]


def test_time_limit_exceeded_fails_the_task_with_124(snerd):
    doc = snerd.submit("--time-limit", "2", "--wait", "sleep", "--", "60", code=124)
    assert doc["state"] == "failed" and "time limit of 2 s exceeded" in doc["failed"][0]["error"]  # nerd's, not Slurm's
    # Slurm's own limit is the backstop: the attempt time plus staging, in minutes
    show = snerd.slurm.run("scontrol", "show", "job", "-o", snerd.array_id(doc["job"])).stdout
    assert "TimeLimit=00:03:00" in show


def test_cancel_kills_running_tasks_and_cancels_pending_ones(snerd, tmp_path, monkeypatch):
    marker = f"nerd-slurm-cancel-{os.getpid()}"
    job = snerd.submit("--array", "4", "--parallel", "1", "--output", "r:/o", "sh", "--", "-c",
                       f'echo $NERD_TASK_INDEX > "$NERD_OUTPUT/i"; [ "$NERD_TASK_INDEX" = 0 ] && exit 0; '
                       f'true {marker}; sleep 120')["job"]
    wait_for(lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0, 60,
             "task 1 running")
    assert snerd.json("job", "status", job)["counts"] == {"pending": 2, "running": 1, "succeeded": 1}
    monkeypatch.setenv("NERD_HOME", str(snerd.home))
    monkeypatch.setenv("SLURM_CONF", str(snerd.slurm.conf))
    [row] = SlurmCLI().queued()
    assert (row["job"], row["pending"], row["running"], row["done"]) == (job, 2, 1, 1)
    doc = snerd.json("job", "cancel", job)
    assert doc["state"] == "cancelled" and doc["exit_code"] == 130
    assert doc["counts"] == {"cancelled": 3, "succeeded": 1}, doc["counts"]
    wait_for(lambda: set(slurm_states(snerd.slurm, snerd.array_id(job))) == {"COMPLETED", "CANCELLED"}, 30,
             "Slurm shows the tasks completed or cancelled")
    wait_for(lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1, 15,
             "the task's process killed")
    out = snerd.download("r", tmp_path / "r")  # the task that finished before the cancel keeps its output
    assert sorted(os.listdir(out)) == ["task-0"]
    one_line_error(snerd.run("job", "cancel", job), 5, "already cancelled")


def test_podman_on_slurm_outputs_missing_image_oom_and_cancel_removes_the_container(snerd, podman, tmp_path):
    doc = snerd.json("run", "--backend", "slurm://", "--runtime", "podman", "--array", "2", "--cpus", "1",
                     "--output", "res:/out", "--wait", podman.image, "--", "sh", "-c",
                     'echo "in a container $NERD_TASK_INDEX" > /out/x')
    assert doc["state"] == "succeeded", doc
    out = snerd.download("res", tmp_path / "res")
    assert (out / "task-1" / "x").read_text() == "in a container 1\n"

    # the image is looked up on the compute node: a missing one fails the task there, with podman's reason
    doc = snerd.json("run", "--backend", "slurm://", "--runtime", "podman", "--wait", "localhost/no-such-image:1",
                     "--", "true", code=125)
    assert "podman could not start the task" in doc["failed"][0]["error"]
    assert "no-such-image" in doc["failed"][0]["error"]
    doc = snerd.json("run", "--backend", "slurm://", "--runtime", "podman", "--memory", "16MiB", "--wait",
                     podman.image, "--", "sh", "-c", "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}",
                     code=137)
    assert "out of memory" in doc["failed"][0]["error"]

    job = snerd.json("run", "--backend", "slurm://", "--runtime", "podman", podman.image, "--", "sleep",
                     "120")["job"]
    name = f"nerd-{job}-0-1"
    wait_for(lambda: podman.run("container", "exists", name, check=False).returncode == 0, 60, "the container")
    assert snerd.json("job", "cancel", job)["state"] == "cancelled"
    wait_for(lambda: podman.run("container", "exists", name, check=False).returncode != 0, 15,
             "the container removed")


def test_slurm_not_reachable_is_one_clear_line(snerd, tmp_path):
    conf = tmp_path / "dead-slurm.conf"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    text = snerd.slurm.conf.read_text()
    text = "\n".join(f"SlurmctldPort={dead}" if ln.startswith("SlurmctldPort=") else ln for ln in text.splitlines())
    conf.write_text(text + "\nMessageTimeout=2\n")
    snerd.extra["SLURM_CONF"] = str(conf)
    started = time.monotonic()
    one_line_error(snerd.run("run", "--backend", "slurm://", "--runtime", "process", "true"), 6,
                   "Slurm not reachable", "slurmctld")
    assert time.monotonic() - started < 30
    assert not list((snerd.home / "jobs").glob("j-*"))  # no half-submitted job left behind

    snerd.extra["PATH"] = "/nonexistent"
    r = subprocess.run([sys.executable, "-m", "nerdcli", "run", "--backend", "slurm://", "--runtime", "process",
                        "true"], env=snerd.env(), capture_output=True, text=True, timeout=60)
    one_line_error(r, 6, "sbatch is not installed")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = s.getsockname()[1]
    snerd.extra.update(PATH=os.environ["PATH"], SLURM_JWT="x.y.z")
    one_line_error(snerd.run("run", "--backend", f"slurm+http://127.0.0.1:{nobody}", "--runtime", "process", "true"),
                   6, "Slurm not reachable", f"127.0.0.1:{nobody}")


# ------------------------------------------------------------------------------------------ slurmrestd


def test_rest_api_end_to_end_with_a_minted_token(rest_nerd, tmp_path):
    doc = rest_nerd.submit("--array", "5", "--output", "res:/out", "--wait", "sh", "--", "-c",
                           'echo "rest $NERD_TASK_INDEX" > "$NERD_OUTPUT/x"; [ "$NERD_TASK_INDEX" != 4 ] || exit 5',
                           code=5)
    assert doc["state"] == "failed" and doc["exit_code"] == 5 and doc["counts"] == {"failed": 1, "succeeded": 4}
    job_doc = json.loads((rest_nerd.job_dir(doc["job"]) / "job.json").read_text())
    assert job_doc["endpoint"] == rest_nerd.slurm.rest_endpoint
    out = rest_nerd.download("res", tmp_path / "res")
    assert sorted(os.listdir(out)) == [f"task-{i}" for i in range(4)]
    assert (out / "task-3" / "x").read_text() == "rest 3\n"

    job = rest_nerd.submit("--array", "3", "sleep", "--", "120")["job"]
    wait_for(lambda: rest_nerd.json("job", "status", job)["counts"].get("running"), 60, "a running task")
    doc = rest_nerd.json("job", "cancel", job)
    assert doc["state"] == "cancelled" and doc["counts"] == {"cancelled": 3}
    one_line_error(rest_nerd.run("job", "cancel", job), 5, "already cancelled")


def test_rest_api_without_or_with_a_bad_token_is_one_clear_line(rest_nerd):
    rest_nerd.extra["SLURM_JWT"] = ""
    one_line_error(rest_nerd.run("run", "--backend", rest_nerd.backend, "--runtime", "process", "true"), 3,
                   "SLURM_JWT")
    rest_nerd.extra["SLURM_JWT"] = rest_nerd.slurm.token() + "x"
    one_line_error(rest_nerd.run("run", "--backend", rest_nerd.backend, "--runtime", "process", "true"), 3,
                   "token")


def test_rest_api_token_from_the_nerd_session(rest_nerd):
    """Without SLURM_JWT the session's JWT (session.json, as `nerd login` writes it) authenticates."""
    del rest_nerd.extra["SLURM_JWT"]
    rest_nerd.home.mkdir(parents=True, exist_ok=True)
    session = rest_nerd.home / "session.json"
    session.write_text(json.dumps({"oauth": {}, "jwt": rest_nerd.slurm.token(), "project": {}}))
    session.chmod(0o600)
    doc = rest_nerd.submit("--wait", "true")
    assert doc["state"] == "succeeded" and doc["backend"] == "slurm"
