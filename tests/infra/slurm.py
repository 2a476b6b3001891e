"""A real single-node Slurm (munged + slurmctld + slurmd, slurmrestd with JWT) for tests and benchmarks.

Debian 12's packages (slurmctld slurmd slurm-client munge slurmrestd
slurm-wlm-jwt-plugin, installed by ``scripts/test.sh``) are started with a
private configuration: every path (state, spool, logs, pid files, the munge
socket and key, the JWT key) lives in one instance directory under
``$TMPDIR/nerd-test-slurm/``, and the ports are picked free, so several test
sessions on one machine do not collide and nothing in /etc is touched.

An instance directory records the test process that owns it; a later start
stops the daemons of instances whose owner died (using their pid files, and
only processes whose command line names that instance) and removes them.

Clients find this cluster through ``SLURM_CONF`` (``Slurm.env``).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

# Under /tmp (world-traversable): munged runs as user munge and slurmrestd as nobody, both need to reach it.
BASE_DIR = Path(os.environ.get("NERD_TEST_SLURM_DIR", "/tmp/nerd-test-slurm"))
REST_API_VERSION = "v0.0.38"  # the newest openapi plugin of Debian 12's slurmrestd (22.05 has v0.0.36-38)
REST_USER = "nobody"  # slurmrestd with rest_auth/jwt refuses to run as root or SlurmUser
DAEMONS = ("slurmrestd", "slurmd", "slurmctld", "munged")  # stop order

SLURM_PACKAGES = "slurmctld slurmd slurm-client munge slurmrestd slurm-wlm-jwt-plugin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against a reused pid), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _kill_instance_pid(pid: int | None, instance: Path, timeout: float = 10.0) -> None:
    """SIGTERM (then SIGKILL) ``pid`` if it is a daemon of ``instance`` (its command line names the directory)."""
    if pid is None or str(instance) not in _cmdline(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _proc_start_time(pid) is None or _is_zombie(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def reap_stale_instances(base: Path = BASE_DIR) -> list[Path]:
    """Stop the daemons of instances whose owning process is gone and remove their directories."""
    reaped = []
    if not base.is_dir():
        return reaped
    for inst in sorted(base.iterdir()):
        if not inst.is_dir():
            continue
        try:
            owner = json.loads((inst / "owner.json").read_text())
            alive = _proc_start_time(owner["pid"]) == owner["start"]
        except (OSError, ValueError, KeyError):
            # No owner record yet: a start in progress, or a crashed one. Only reap when old.
            alive = time.time() - inst.stat().st_mtime < 120
        if alive:
            continue
        for daemon in DAEMONS:
            _kill_instance_pid(_read_pid(inst / f"{daemon}.pid"), inst)
        shutil.rmtree(inst, ignore_errors=True)
        reaped.append(inst)
    return reaped


class Slurm:
    """One private single-node cluster. ``start()`` returns once sinfo shows the node idle."""

    def __init__(self, base: Path = BASE_DIR) -> None:
        for tool in ("slurmctld", "slurmd", "munged", "sbatch", "slurmrestd"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} not found: scripts/test.sh installs {SLURM_PACKAGES} (APT_PACKAGES)")
        base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o755)
        reap_stale_instances(base)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=base))
        self.dir.chmod(0o755)  # slurmrestd (user nobody) reads slurm.conf and the munge socket below it
        self.conf = self.dir / "slurm.conf"
        self.munge_dir = self.dir / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.jwt_key = self.dir / "jwt.key"
        self.node_line = self._node_line()  # also the name slurmd knows this host by (short hostname)
        self.hostname = self.node_line.split()[0].split("=", 1)[1]
        self.ctld_port, self.slurmd_port, self.rest_port = _free_port(), _free_port(), _free_port()
        self.rest_url = f"http://127.0.0.1:{self.rest_port}"
        self.rest_api_version = REST_API_VERSION
        self.env = {"SLURM_CONF": str(self.conf)}
        self.startup_seconds: float | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        (self.dir / "owner.json").write_text(json.dumps({"pid": os.getpid(), "start": _proc_start_time(os.getpid())}))

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "Slurm":
        t0 = time.monotonic()
        try:
            self._start_munge()
            self._write_config()
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            self._wait(lambda: self._run("scontrol", "ping", check=False).stdout.count("UP") > 0,
                       timeout, "slurmctld")
            self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
            self._wait(self._node_ready, timeout, "slurmd (node idle)")
            self._start_rest(timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop every daemon of this instance and remove its directory."""
        for daemon in DAEMONS:
            proc = self._procs.pop(daemon, None)
            pid = proc.pid if proc else _read_pid(self.dir / f"{daemon}.pid")
            _kill_instance_pid(pid, self.dir)
            if proc:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- clients -------------------------------------------------------------------------------------
    def full_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def _run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.full_env(), capture_output=True, text=True, check=check, timeout=timeout)

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A Slurm client command (sbatch, squeue, scontrol, …) against this cluster; output captured."""
        return self._run(*cmd, check=check, timeout=timeout)

    def token(self, username: str | None = None, lifespan: int = 3600) -> str:
        """A JWT for ``username`` (default: the current user) minted by ``scontrol token``."""
        username = username or pwd.getpwuid(os.getuid()).pw_name
        out = self._run("scontrol", "token", f"username={username}", f"lifespan={lifespan}").stdout
        for line in out.splitlines():
            if line.startswith("SLURM_JWT="):
                return line.split("=", 1)[1].strip()
        raise RuntimeError(f"scontrol token printed no SLURM_JWT: {out!r}")

    def rest_headers(self, username: str | None = None, lifespan: int = 3600) -> dict[str, str]:
        username = username or pwd.getpwuid(os.getuid()).pw_name
        return {"X-SLURM-USER-NAME": username, "X-SLURM-USER-TOKEN": self.token(username, lifespan)}

    @property
    def rest_endpoint(self) -> str:
        """The nerd_api_endpoint that selects this cluster's REST API."""
        return f"slurm+http://127.0.0.1:{self.rest_port}"

    def wait_job(self, job_id: str | int, timeout: float = 300) -> None:
        """Wait until squeue no longer lists any part of ``job_id`` (array tasks included)."""
        def gone() -> bool:
            out = self._run("squeue", "-h", "-j", str(job_id), "-o", "%i", check=False)
            return out.returncode == 0 and not out.stdout.strip() or "Invalid job id" in out.stderr
        self._wait(gone, timeout, f"job {job_id}", interval=0.5)

    # -- internals -----------------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], **kw) -> subprocess.Popen:
        log = open(self.dir / f"{name}.out", "ab")
        kw.setdefault("env", self.full_env())
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, **kw)
        log.close()
        self._procs[name] = proc
        (self.dir / f"{name}.pid").write_text(f"{proc.pid}\n")
        return proc

    def _wait(self, ready, timeout: float, what: str, interval: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}; "
                                       f"see {self.dir}/{name}.out and {self.dir}/log/\n{self._tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready within {timeout}s; see {self.dir}/log/")
            time.sleep(interval)

    def _tail(self, name: str) -> str:
        texts = []
        for path in (self.dir / f"{name}.out", self.dir / "log" / f"{name}.log"):
            if path.exists():
                texts.append(path.read_text(errors="replace")[-1500:])
        return "\n".join(texts)

    def _start_munge(self) -> None:
        """A private munged: own key, socket, pid and log, running as the munge user as munged expects."""
        munge = pwd.getpwnam("munge")
        self.munge_dir.mkdir()
        self.munge_dir.chmod(0o755)  # whatever the umask: clients (slurmrestd as nobody) connect to the socket
        key = self.munge_dir / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
        for path in (self.munge_dir, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        key.chmod(0o600)
        self._spawn("munged", [
            "munged", "--foreground", f"--socket={self.munge_socket}", f"--key-file={key}",
            f"--log-file={self.munge_dir / 'munged.log'}", f"--pid-file={self.munge_dir / 'munged.pid'}",
            f"--seed-file={self.munge_dir / 'munged.seed'}",
        ], user=munge.pw_uid, group=munge.pw_gid, extra_groups=[])
        self._wait(lambda: self.munge_socket.exists(), 20, "munged")

    def _write_config(self) -> None:
        for d in ("state", "spool", "log"):
            (self.dir / d).mkdir()
        self.jwt_key.write_bytes(os.urandom(32))
        self.jwt_key.chmod(0o600)
        node = self.node_line
        self.conf.write_text(f"""\
ClusterName=nerdtest
SlurmctldHost={self.hostname}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key={self.jwt_key}
StateSaveLocation={self.dir}/state
SlurmdSpoolDir={self.dir}/spool
SlurmctldPidFile={self.dir}/slurmctld.daemon.pid
SlurmdPidFile={self.dir}/slurmd.daemon.pid
SlurmctldLogFile={self.dir}/log/slurmctld.log
SlurmdLogFile={self.dir}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1,sched_min_interval=0,default_queue_depth=1000,bf_continue
MaxArraySize=10001
MaxJobCount=100000
MinJobAge=600
KillWait=2
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes={self.hostname} Default=YES MaxTime=INFINITE State=UP
""")
        self.conf.chmod(0o644)  # slurmrestd (nobody) reads it, whatever the umask

    @staticmethod
    def _node_line() -> str:
        """This host's name, real CPUs and memory, as slurmd itself reports them (``slurmd -C``)."""
        out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
        line = out.splitlines()[0] if out else ""
        if not line.startswith("NodeName="):
            raise RuntimeError(f"slurmd -C printed {out!r}")
        return line

    def _node_ready(self) -> bool:
        out = self._run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()
        return out in ("idle", "mixed", "allocated")

    def _start_rest(self, timeout: float) -> None:
        self._spawn("slurmrestd", [
            "slurmrestd", "-f", str(self.conf), "-a", "rest_auth/jwt", "-s", f"openapi/{self.rest_api_version}",
            "-u", REST_USER, f"127.0.0.1:{self.rest_port}",
        ], env={**self.full_env(), "SLURM_JWT": "daemon"})  # "daemon": talk to slurmctld with each request's JWT
        headers = self.rest_headers()
        url = f"{self.rest_url}/slurm/{self.rest_api_version}/ping"

        def answers() -> bool:
            try:
                return httpx.get(url, headers=headers, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        self._wait(answers, timeout, "slurmrestd")
