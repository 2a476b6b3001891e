"""The real components the suite runs on: podman with runc and local images, a single-node Slurm with REST."""

from __future__ import annotations

import os
import signal
import subprocess
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

from infra.slurm import Slurm, _cmdline, _read_pid


def test_podman_runs_busybox_image_with_runc(podman):
    out = podman.run("run", "--rm", podman.image, "sh", "-c", "echo hello from $(uname -s); ulimit -n").stdout
    assert out.split("\n")[0] == "hello from Linux"
    assert podman.run("info", "--format", "{{.Host.OCIRuntime.Name}}").stdout.strip() == "runc"
    assert os.environ["CONTAINERS_CONF"] == str(podman.conf_path)


def test_python_base_image_has_python_venv_and_fuse(podman, python_base_image):
    script = "python3 -m venv /tmp/v && /tmp/v/bin/python -c 'import sys; print(sys.version_info[0])' && command -v fusermount3"
    out = podman.run("run", "--rm", python_base_image, "sh", "-c", script).stdout.split()
    assert out == ["3", "/usr/bin/fusermount3"]


def test_sbatch_array_runs_every_task(slurm, tmp_path):
    job = slurm.run("sbatch", "--parsable", "--array=0-9", f"--output={tmp_path}/%a.log",
                    "--wrap", "echo task $SLURM_ARRAY_TASK_ID").stdout.strip()
    slurm.wait_job(job, timeout=120)
    assert sorted((tmp_path / f"{i}.log").read_text() for i in range(10)) == sorted(f"task {i}\n" for i in range(10))


def test_slurmrestd_answers_with_a_minted_token_only(slurm):
    url = f"{slurm.rest_url}/slurm/{slurm.rest_api_version}/ping"
    ok = httpx.get(url, headers=slurm.rest_headers(), timeout=10)
    assert ok.status_code == 200 and ok.json()["pings"][0]["ping"] == "UP"
    forged = {"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": slurm.token() + "x"}
    rejected = httpx.get(url, headers=forged, timeout=10)  # 22.05 answers 500 with an error, not 401
    assert rejected.status_code != 200 and rejected.json()["errors"]


def test_a_new_cluster_stops_the_daemons_of_one_whose_owner_died():
    """A test session killed mid-run leaves daemons behind; the next start reaps them (and only them)."""
    base = Path(tempfile.mkdtemp(prefix="nerd-test-slurm-reap-"))
    base.chmod(0o755)  # munged (user munge) must reach its socket and key below it
    starter = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from infra.slurm import Slurm
        s = Slurm(Path({str(base)!r})).start()
        print(s.dir, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    stale_dir = Path(proc.stdout.readline().strip())
    pids = {d: _read_pid(stale_dir / f"{d}.pid") for d in ("munged", "slurmctld", "slurmd", "slurmrestd")}
    assert all(str(stale_dir) in _cmdline(pid) for pid in pids.values())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    fresh = Slurm(base)  # reaps in its constructor
    try:
        assert not stale_dir.exists()
        deadline = time.monotonic() + 15
        while any(str(stale_dir) in _cmdline(pid) for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(str(stale_dir) in _cmdline(pid) for pid in pids.values())
    finally:
        fresh.stop()
        shutil.rmtree(base, ignore_errors=True)
