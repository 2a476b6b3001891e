"""Jobs on the local backend as users run them: the real `nerd` command, real worker processes, real
stores, real podman containers and a real nerdfs mount."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nerdcli.jobs.model import FAILED, SUCCEEDED, TaskRecord, job_state
from nerdcli.service.runspec import parse_duration, parse_output, split_dest
from nerdfs import UsageError

HAVE_FUSE = os.path.exists("/dev/fuse") and os.geteuid() == 0


class Nerd:
    """`nerd` in its own NERD_HOME and store; stops the workers it started."""

    def __init__(self, tmp: Path, store: str | None = None) -> None:
        self.home = tmp / "home"
        self.store = store or f"file://{tmp / 'store'}"
        self.tmp = tmp

    def env(self) -> dict:
        e = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "NERD_"))}
        e.update(NERD_HOME=str(self.home), NERD_STORE=self.store, NERD_WORK_DIR=str(self.tmp))
        return e

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "nerdcli", *args], env=self.env(), capture_output=True,
                              text=True, timeout=timeout)

    def json(self, *args: str, code: int = 0, timeout: float = 120) -> dict:
        r = self.run("--output", "json", *args, timeout=timeout)
        assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
        return json.loads(r.stdout)

    def submit(self, *args: str) -> str:
        return self.json("run", "--runtime", "process", *args)["job"]

    def stop(self) -> None:
        self.run("worker", "stop", "--timeout", "10")


@pytest.fixture
def nerd(tmp_path):
    n = Nerd(tmp_path)
    yield n
    n.stop()


def one_line_error(r: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nerd: error: ") and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for a parent that does not reap counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return gone(pid)


def container_of(podman, job: str, index: int = 0) -> str | None:
    """The name of the container running task ``index`` of ``job``, if one exists."""
    r = podman.run("ps", "-a", "--filter", f"name=^nerd-{job}-{index}-", "--format", "{{.Names}}", check=False)
    names = r.stdout.split()
    return names[0] if names else None


def download(nerd: Nerd, spec: str, dest: Path) -> Path:
    nerd.json("dataset", "download", spec, str(dest))
    return dest


# ------------------------------------------------------------------------------------------ pure logic


def test_argument_parsing():
    assert parse_duration("90") == 90 and parse_duration("10m") == 600 and parse_duration("2h") == 7200
    assert parse_duration("1:30:00") == 5400 and parse_duration("1-00:00:10") == 86410
    with pytest.raises(UsageError):
        parse_duration("soon")
    assert split_dest("ds@ab12:/data", "/input") == ("ds@ab12", "/data")
    assert split_dest("/home/me/x", "/input") == ("/home/me/x", "/input")
    assert parse_output("/out", "j-1").dataset == "j-1-output"
    assert parse_output("res:/out", "j-1").dataset == "res"
    with pytest.raises(UsageError):
        parse_output("res:out", "j-1")


def test_job_state_is_the_first_failure_by_end_time():
    recs = {0: TaskRecord(0, SUCCEEDED, 0, ended="2"), 1: TaskRecord(1, FAILED, 3, ended="5"),
            2: TaskRecord(2, FAILED, 7, ended="4")}
    assert job_state(recs, 3) == ("failed", 7)
    assert job_state({0: recs[0]}, 2)[0] == "running"
    assert job_state({0: recs[0]}, 1) == ("succeeded", 0)


# ------------------------------------------------------------------------------------------ process runtime


def test_thousand_task_array_commits_every_output_once(nerd, tmp_path):
    started = time.monotonic()
    doc = nerd.json("run", "--runtime", "process", "--array", "1000", "--output", "res:/out", "--wait", "sh", "--",
                    "-c", 'echo "task $NERD_TASK_INDEX" > "$NERD_OUTPUT/out.txt"', timeout=300)
    elapsed = time.monotonic() - started
    assert doc["state"] == "succeeded" and doc["exit_code"] == 0 and doc["tasks"] == 1000
    assert doc["counts"] == {"succeeded": 1000}
    log = nerd.json("dataset", "log", "res")["snapshots"]
    assert len(log) == 1 and log[0]["snapshot"] == doc["outputs"]["res"]  # committed once
    out = download(nerd, "res", tmp_path / "res")
    assert sorted(os.listdir(out)) == sorted(f"task-{i}" for i in range(1000))
    assert all((out / f"task-{i}" / "out.txt").read_text() == f"task {i}\n" for i in range(1000))
    print(f"1000 tasks in {elapsed:.1f} s")


def test_inputs_local_directory_and_dataset_pinned_and_visible(nerd, tmp_path):
    src = tmp_path / "genomes"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("one\ntwo\n")
    (src / "sub" / "b.txt").write_text("three\n")
    doc = nerd.json("run", "--runtime", "process", "--input", f"{src}:/data", "--output", "counts:/out", "-e",
                    "GREETING=hi", "--wait", "sh", "--", "-c",
                    'cat data/a.txt "$NERD_INPUT/sub/b.txt" | wc -l > "$NERD_OUTPUT/n"; echo "$GREETING" > out/g')
    assert doc["state"] == "succeeded", doc
    [inp] = doc["inputs"]
    assert inp["dataset"] == "genomes" and inp["path"] == "" and len(inp["snapshot"]) == 64
    out = download(nerd, "counts", tmp_path / "c1")
    assert (out / "task-0" / "n").read_text().strip() == "3" and (out / "task-0" / "g").read_text() == "hi\n"

    (src / "a.txt").write_text("changed\n")  # the pinned snapshot does not change under a later job
    doc2 = nerd.json("run", "--runtime", "process", "--input", f"genomes@{inp['snapshot'][:10]}:/g", "--output",
                     "counts:/o", "--wait", "sh", "--", "-c", 'cat "$NERD_INPUT/a.txt" > "$NERD_OUTPUT/a"')
    assert doc2["state"] == "succeeded" and doc2["inputs"][0]["snapshot"] == inp["snapshot"]
    out = download(nerd, "counts", tmp_path / "c2")
    assert (out / "task-0" / "a").read_text() == "one\ntwo\n"


def test_tasks_file_and_parallel_cap(nerd, tmp_path):
    tasks = tmp_path / "params.txt"
    tasks.write_text("alpha 1\n\n# a comment\nbeta 'two words'\ngamma 3\n")
    doc = nerd.json("run", "--runtime", "process", "--tasks", str(tasks), "--parallel", "1", "--output", "r:/o",
                    "--wait", "sh", "--", "-c",
                    'echo "$1|$2" > "$NERD_OUTPUT/args"; date +%s.%N > "$NERD_OUTPUT/t0"; sleep 0.3; '
                    'date +%s.%N > "$NERD_OUTPUT/t1"', "task")
    assert doc["tasks"] == 3 and doc["state"] == "succeeded"
    out = download(nerd, "r", tmp_path / "r")
    assert [(out / f"task-{i}" / "args").read_text() for i in range(3)] == ["alpha|1\n", "beta|two words\n",
                                                                             "gamma|3\n"]
    spans = sorted((float((out / f"task-{i}" / "t0").read_text()), float((out / f"task-{i}" / "t1").read_text()))
                   for i in range(3))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # --parallel 1: never two at once


def test_failing_task_fails_the_job_with_its_code_others_go_on_logs_kept(nerd, tmp_path):
    r = nerd.run("--output", "json", "run", "--runtime", "process", "--array", "4", "--output", "r:/o", "--wait",
                 "sh", "--", "-c", 'echo "log of $NERD_TASK_INDEX"; [ "$NERD_TASK_INDEX" = 2 ] && exit 3; '
                                   'echo ok > "$NERD_OUTPUT/ok"')
    assert r.returncode == 3, r.stderr
    doc = json.loads(r.stdout)
    assert doc["state"] == "failed" and doc["exit_code"] == 3 and doc["counts"] == {"failed": 1, "succeeded": 3}
    assert doc["failed"][0]["index"] == 2 and "exited with code 3" in doc["failed"][0]["error"]
    out = download(nerd, "r", tmp_path / "r")
    assert sorted(os.listdir(out)) == ["task-0", "task-1", "task-3"]  # no lost output of a task that succeeded
    logs = nerd.json("job", "logs", doc["job"], "--task", "2")["log"]
    assert "log of 2" in logs and "exited with code 3" in logs
    status = nerd.json("job", "status", doc["job"])
    assert status["state"] == "failed" and status["exit_code"] == 3
    r = nerd.run("job", "wait", doc["job"])
    assert r.returncode == 3


def test_command_not_found_retries_time_limit_and_fail_fast(nerd, tmp_path):
    doc = nerd.json("run", "--runtime", "process", "--wait", "no-such-command-xyz", code=127)
    assert doc["failed"][0]["error"] == "command not found: no-such-command-xyz"

    marker = tmp_path / "marker"  # the first attempt fails, the retry succeeds
    doc = nerd.json("run", "--runtime", "process", "--retries", "2", "--output", "r:/o", "--wait", "sh", "--", "-c",
                    f'if [ -e {marker} ]; then echo second > "$NERD_OUTPUT/x"; else touch {marker}; exit 9; fi')
    assert doc["state"] == "succeeded"
    logs = nerd.json("job", "logs", doc["job"], "-t", "0")["log"]
    assert "attempt 2 of 3" in logs

    started = time.monotonic()
    doc = nerd.json("run", "--runtime", "process", "--time-limit", "1", "--wait", "sleep", "--", "30", code=124)
    assert "time limit of 1 s exceeded" in doc["failed"][0]["error"] and time.monotonic() - started < 15

    doc = nerd.json("run", "--runtime", "process", "--array", "6", "--parallel", "1", "--fail-fast", "--wait",
                    "sh", "--", "-c", '[ "$NERD_TASK_INDEX" = 1 ] && exit 5; sleep 0.2', code=5)
    assert doc["counts"].get("failed") == 1 and doc["counts"].get("cancelled", 0) >= 3, doc["counts"]


def test_bad_input_is_one_clear_line(nerd, tmp_path):
    one_line_error(nerd.run("run", "--runtime", "process", "--input", str(tmp_path / "nope"), "true"), 4,
                   "no such directory")
    f = tmp_path / "file.txt"
    f.write_text("x")
    one_line_error(nerd.run("run", "--runtime", "process", "--input", str(f), "true"), 2, "is a file")
    one_line_error(nerd.run("run", "--runtime", "process", "--input", "nosuchdataset", "true"), 4,
                   "no dataset named 'nosuchdataset'")
    one_line_error(nerd.run("run", "--runtime", "process", "--array", "2", "--tasks", str(f), "true"), 2,
                   "--array and --tasks")
    one_line_error(nerd.run("run", "--runtime", "process", "--memory", "lots", "true"), 2, "--memory")
    one_line_error(nerd.run("run", "--runtime", "process", "--backend", "pbs://x", "true"), 3, "pbs://x")
    one_line_error(nerd.run("job", "status", "j-nope"), 4, "no job")
    job = nerd.submit("--wait", "true")
    one_line_error(nerd.run("job", "cancel", job), 5, "already succeeded")


def test_cancel_kills_running_tasks_and_keeps_finished_outputs(nerd, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    job = nerd.submit("--array", "5", "--parallel", "2", "--output", "r:/o", "sh", "--", "-c",
                      f'echo $$ > {pids}/$NERD_TASK_INDEX; echo done > "$NERD_OUTPUT/x"; '
                      '[ "$NERD_TASK_INDEX" -lt 2 ] || exec sleep 60')
    deadline = time.monotonic() + 30
    while nerd.json("job", "status", job)["counts"].get("running", 0) < 2 or len(os.listdir(pids)) < 4:
        assert time.monotonic() < deadline, nerd.json("job", "status", job)
        time.sleep(0.2)
    queue = nerd.json("queue", "list")["jobs"]
    assert queue[0]["job"] == job and queue[0]["running"] == 2 and queue[0]["pending"] == 1
    doc = nerd.json("job", "cancel", job)
    assert doc["state"] == "cancelled" and doc["exit_code"] == 130
    assert doc["counts"] == {"cancelled": 3, "succeeded": 2}
    for p in (2, 3):  # the running tasks were killed
        assert wait_gone(int((pids / str(p)).read_text()))
    out = download(nerd, "r", tmp_path / "r")
    assert sorted(os.listdir(out)) == ["task-0", "task-1"]
    assert nerd.json("queue", "list")["jobs"] == []


def test_task_of_a_killed_worker_is_requeued(nerd, tmp_path):
    job = nerd.submit("--array", "2", "--output", "r:/o", "sh", "--", "-c",
                      f'echo "$$" >> {tmp_path}/runs-$NERD_TASK_INDEX; sleep 2; echo ok > "$NERD_OUTPUT/x"')
    deadline = time.monotonic() + 30
    while True:
        workers = nerd.json("worker", "list")["workers"]
        busy = [w for w in workers if w["task"]]
        if busy:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    victim = busy[0]
    index = int(victim["task"].rsplit("/", 1)[1])
    first_task_pid = None
    while first_task_pid is None:
        try:
            first_task_pid = int((tmp_path / f"runs-{index}").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            time.sleep(0.05)
    os.kill(victim["pid"], signal.SIGKILL)
    doc = nerd.json("job", "wait", job, timeout=60)
    assert doc["state"] == "succeeded" and doc["counts"] == {"succeeded": 2}
    assert len((tmp_path / f"runs-{index}").read_text().split()) == 2  # ran again
    assert wait_gone(first_task_pid)  # the left-behind task was killed, not left running
    assert victim["pid"] not in [w["pid"] for w in nerd.json("worker", "list")["workers"]]
    out = download(nerd, "r", tmp_path / "r")
    assert sorted(os.listdir(out)) == ["task-0", "task-1"]


def test_workers_start_list_stop_and_job_list(nerd):
    started = nerd.json("worker", "start", "-n", "2")["started"]
    assert len(started) == 2
    ws = nerd.json("worker", "list")["workers"]
    assert sorted(w["pid"] for w in ws) == sorted(started)
    r = nerd.run("run", "--runtime", "process", "--array", "3", "--output", "json", "--wait", "true")
    job = json.loads(r.stdout)["job"]  # `--output json` after `run` is the format, as for every command
    jobs = nerd.json("job", "list")["jobs"]
    assert jobs[0]["id"] == job and jobs[0]["state"] == "succeeded"
    stopped = nerd.json("worker", "stop")["stopped"]
    assert set(started) <= set(stopped)  # (nerd run may have added one: up to one worker per waiting task)
    assert nerd.json("worker", "list")["workers"] == []
    assert all(wait_gone(pid) for pid in started)


def test_logs_follow_streams_until_the_job_ends(nerd):
    job = nerd.submit("sh", "--", "-c", "for i in 1 2 3; do echo line $i; sleep 0.3; done")
    r = nerd.run("job", "logs", job, "--follow", timeout=60)
    assert r.returncode == 0 and r.stdout.splitlines() == ["[0] line 1", "[0] line 2", "[0] line 3"], r.stdout


# ------------------------------------------------------------------------------------------ containers + mount


@pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse and root")
def test_mount_to_podman_job_to_mount_end_to_end(podman, tmp_path):
    from test_mount import Mounted

    n = Nerd(tmp_path)
    m = Mounted(tmp_path, n.store).mount()
    try:
        (m.mnt / "ds" / "sub").mkdir(parents=True)
        for i in range(3):
            (m.mnt / "ds" / "sub" / f"f{i}.txt").write_text(f"data {i}\n" * (i + 1))
        doc = n.json("run", "--runtime", "podman", "--input", f"{m.mnt}/ds/sub:/data", "--output", "res:/out",
                     "--array", "2", "--cpus", "1", "--memory", "64MiB", "--wait", podman.image, "--", "sh", "-c",
                     'cat /data/*.txt | wc -l > /out/lines; echo $NERD_TASK_INDEX > /out/index; '
                     'touch /data/x 2>/dev/null && echo rw > /out/rw; true')
        assert doc["state"] == "succeeded", doc
        [inp] = doc["inputs"]
        assert inp["dataset"] == "ds" and inp["path"] == "sub"
        cache = n.home / "jobs" / "cache"
        assert not cache.exists() or not os.listdir(cache)  # read from MNT/.snapshots, nothing restored
        sid = doc["outputs"]["res"]
        # the mount shows the new snapshot straight from the store ...
        view = m.mnt / ".snapshots" / "res" / sid
        for i in range(2):
            assert (view / f"task-{i}" / "lines").read_text().strip() == "6"
            assert (view / f"task-{i}" / "index").read_text().strip() == str(i)
            assert not (view / f"task-{i}" / "rw").exists()  # the input was mounted read-only
        # ... and so does the store for another machine
        out = download(n, "res", tmp_path / "res")
        assert sorted(os.listdir(out)) == ["task-0", "task-1"]
        # ... and MNT/res itself at once: finalize asked the mount to refresh
        assert (m.mnt / "res" / "task-1" / "lines").read_text().strip() == "6"
        assert sorted(os.listdir(m.mnt / "res")) == ["task-0", "task-1"]
    finally:
        n.stop()
        m.cleanup()


def test_podman_unknown_image_oom_and_cancel_kills_the_container(podman, nerd, tmp_path):
    one_line_error(nerd.run("run", "--runtime", "podman", "localhost/no-such-image:1", "--", "true"), 4,
                   "localhost/no-such-image:1")
    doc = nerd.json("run", "--runtime", "podman", "--wait", podman.image, "--", "no-such-cmd", code=127)
    assert "command not found" in doc["failed"][0]["error"]
    doc = nerd.json("run", "--runtime", "podman", "--memory", "16MiB", "--wait", podman.image, "--", "sh", "-c",
                    "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}", code=137)
    assert "out of memory" in doc["failed"][0]["error"]

    job = nerd.json("run", "--runtime", "podman", podman.image, "--", "sleep", "60")["job"]
    deadline = time.monotonic() + 30
    while nerd.json("job", "status", job)["counts"].get("running", 0) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    while (name := container_of(podman, job)) is None:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    doc = nerd.json("job", "cancel", job)
    assert doc["state"] == "cancelled"
    assert podman.run("container", "exists", name, check=False).returncode != 0


def test_jobs_on_an_s3_store(seaweed, s3_url, tmp_path):
    """Inputs, task outputs and the commit go through S3 (credentials from config.json reach the workers)."""
    from seaweed import ACCESS_KEY, SECRET_KEY

    n = Nerd(tmp_path, store=s3_url)
    n.home.mkdir(parents=True)
    (n.home / "config.json").write_text(json.dumps({"datasets": {"s3": {
        "endpoint_url": seaweed.endpoint, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}}}))
    src = tmp_path / "params"
    src.mkdir()
    (src / "p.txt").write_text("7\n")
    try:
        doc = n.json("run", "--runtime", "process", "--input", f"{src}:/p", "--output", "s3res:/o", "--array", "3",
                     "--wait", "sh", "--", "-c", 'echo $(( $(cat "$NERD_INPUT/p.txt") * NERD_TASK_INDEX )) '
                                             '> "$NERD_OUTPUT/v"')
        assert doc["state"] == "succeeded", doc
        out = download(n, "s3res", tmp_path / "out")
        assert [(out / f"task-{i}" / "v").read_text() for i in range(3)] == ["0\n", "7\n", "14\n"]
    finally:
        n.stop()


def test_a_worker_dying_at_start_is_reported_not_waited_for(tmp_path, monkeypatch):
    from nerdcli.client import batch
    from nerdcli.jobs import local
    from nerdcli.jobs.model import JobDir, JobSpec
    from nerdfs import NerdError

    monkeypatch.setenv("NERD_HOME", str(tmp_path))
    monkeypatch.setenv("NERD_WORKERS", "1")
    dead = subprocess.Popen(["true"])
    dead.wait()
    backend = local.LocalBackend()
    backend.queue.register("w-test", dead.pid, auto=True)  # registered by its starter, never heartbeat
    (tmp_path / "jobs" / "workers").mkdir(parents=True)
    (tmp_path / "jobs" / "workers" / "w-test.log").write_text("Traceback ...\nImportError: no module named x\n")
    spec = JobSpec(name="t", image="true", task_args=[[]], store=f"file://{tmp_path / 'store'}")
    jd = JobDir.create("j-test", spec, "local")
    backend.queue.add_job(jd.path, spec)
    with pytest.raises(NerdError, match="died while starting: ImportError: no module named x"):
        batch.status(jd)
    backend.stop_workers(10)


def test_tasks_sharing_a_work_directory_never_see_each_others_files(nerd, tmp_path):
    doc = nerd.json("run", "--runtime", "process", "--array", "6", "--parallel", "1", "--output", "r:/o",
                    "--input", f"{tmp_path}:/in", "--wait", "sh", "--", "-c",
                    'b=$(ls -A "$NERD_OUTPUT"); echo "[$b]" > "$NERD_OUTPUT/before"; ls -A > "$NERD_OUTPUT/cwd"; '
                    'mkdir -p "$NERD_OUTPUT/d$NERD_TASK_INDEX/e" scratch; echo x > scratch/f; '
                    'echo $NERD_TASK_INDEX > "$NERD_OUTPUT/d$NERD_TASK_INDEX/e/v"')
    assert doc["state"] == "succeeded", doc
    out = download(nerd, "r", tmp_path / "r")
    for i in range(6):
        assert sorted(os.listdir(out / f"task-{i}")) == ["before", "cwd", f"d{i}"]
        assert (out / f"task-{i}" / "before").read_text() == "[]\n"  # an empty output directory
        assert (out / f"task-{i}" / "cwd").read_text().split() == ["in", "o"]  # no scratch left behind


def test_podman_task_of_a_killed_worker_is_removed_and_rerun(podman, nerd, tmp_path):
    job = nerd.json("run", "--runtime", "podman", "--output", "r:/o", podman.image, "--", "sh", "-c",
                    "sleep 3; echo ok > /o/x")["job"]
    deadline = time.monotonic() + 30
    while (name := container_of(podman, job)) is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    [victim] = [w for w in nerd.json("worker", "list")["workers"] if w["task"]]
    os.kill(victim["pid"], signal.SIGKILL)
    doc = nerd.json("job", "wait", job, timeout=90)
    assert doc["state"] == "succeeded" and doc["counts"] == {"succeeded": 1}
    assert podman.run("container", "exists", name, check=False).returncode != 0  # not left running
    out = download(nerd, "r", tmp_path / "r")
    assert (out / "task-0" / "x").read_text() == "ok\n"
