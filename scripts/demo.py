"""The main job, end to end on the embedded default (a file:// store).

Runs the real ``nerd`` and ``nerdfs`` commands: upload a sample folder, edit
one file, upload again (only the changed chunk travels), download the
dataset and check every byte; then mount the store, ``cp -a`` the folder into
a new dataset and ``nerdfs sync``: its chunks are already stored, so almost
nothing is uploaded; and last, ``nerd run`` a 4-task job on the mounted data
(process runtime: no container engine needed) and show where its output is. Everything lives in a temporary NERD_HOME unless
``--keep DIR`` names one to keep.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

NERD = [sys.executable, "-m", "nerdcli"]


def nerd(*args: str, env: dict) -> dict:
    out = subprocess.run([*NERD, "--output", "json", *args], env=env, check=True, stdout=subprocess.PIPE)
    return json.loads(out.stdout)


def make_sample(root: Path) -> None:
    rng = random.Random(42)
    (root / "raw").mkdir(parents=True)
    (root / "notes").mkdir()
    for i in range(3):
        (root / "raw" / f"reads-{i}.bin").write_bytes(rng.randbytes(12 << 20))
    for i in range(200):
        (root / "notes" / f"note-{i:03}.txt").write_text(f"sample {i}\n" + "ACGT" * rng.randrange(10, 2000))
    (root / "table.csv").write_text("".join(f"{i},{rng.random():.6f},{rng.choice('xyz')}\n" for i in range(200_000)))
    (root / "latest").symlink_to("table.csv")


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() + f" {oct(p.stat().st_mode & 0o777)}"
    return out


def nerdfs(*args: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "nerdfs", *args, "--output", "json"], env=env, check=True,
                         stdout=subprocess.PIPE)
    return json.loads(out.stdout)


def mount_demo(work: Path, src: Path, env: dict) -> bool:
    """Mount the same store, cp the sample into a new dataset, sync: dedup means ~nothing is uploaded.

    Then, while mounted, run a job on the mounted data (see :func:`job_demo`).
    """
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("mount: skipped (FUSE needs root and /dev/fuse here)")
        return job_demo(work, "sample/notes", env)
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    nerdfs("mount", str(mnt), "--cache-dir", str(work / "mount-cache"), env=env)
    try:
        before = nerdfs("status", str(mnt), env=env)["uploaded_bytes"]
        (mnt / "copy").mkdir()
        subprocess.run(["cp", "-a", f"{src}/.", str(mnt / "copy")], check=True)
        snap = nerdfs("sync", str(mnt), env=env)["snapshots"]["copy"]
        status = nerdfs("status", str(mnt), env=env)
        same = tree_digest(src) == tree_digest(mnt / "copy")
        history = sorted(os.listdir(mnt / ".snapshots" / "copy"))
        sent = status["uploaded_bytes"] - before
        print(f"mount: cp -a into {mnt}/copy, nerdfs sync → snapshot {snap[:12]} "
              f"({len(history)} in .snapshots/copy); uploaded {mib(sent).strip()} "
              f"(everything else deduplicated); copy identical: {'yes' if same else 'NO'}")
        job_ok = job_demo(work, str(mnt / "copy" / "notes"), env, mnt)
    finally:
        nerdfs("umount", str(mnt), env=env)
    return same and job_ok


def job_demo(work: Path, source: str, env: dict, mnt: Path | None = None) -> bool:
    """The main job's last step: a 4-task job on the (mounted) notes, outputs committed as one snapshot.

    The process runtime needs no container engine: each task counts the lines of
    every fourth note and writes its figure to its output directory.
    """
    script = ('ls "$NERD_INPUT" | awk -v i="$NERD_TASK_INDEX" "NR % 4 == i" | '
              '(cd "$NERD_INPUT" && xargs cat) | wc -l > "$NERD_OUTPUT/lines"')
    try:
        job = nerd("run", "--runtime", "process", "--input", f"{source}:/notes", "--output", "note-lines:/out",
                   "--array", "4", "--wait", "sh", "--", "-c", script, env=env)
    finally:
        subprocess.run([*NERD, "worker", "stop"], env=env, stdout=subprocess.DEVNULL)
    sid = job["outputs"].get("note-lines", "")
    where = (f"{mnt}/note-lines/task-<i>/lines" if mnt
             else f"`nerd dataset download note-lines DIR` (snapshot {sid[:12]})")
    total = 0
    if mnt and sid:  # the job's finalize told the mount to show the new snapshot
        total = sum(int((mnt / "note-lines" / f"task-{i}" / "lines").read_text()) for i in range(4))
    inp = job["inputs"][0]
    print(f"job: {job['job']} on {inp['dataset']}@{inp['snapshot'][:12]}/{inp['path']}: {job['state']}, "
          f"{job['counts'].get('succeeded', 0)}/{job['tasks']} tasks; output note-lines@{sid[:12]} at {where}"
          + (f"; {total} lines in all" if total else ""))
    return job["state"] == "succeeded" and len(sid) == 64


def mib(n: int) -> str:
    return f"{n / (1 << 20):8.2f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep", help="keep the demo's NERD_HOME and data in this directory")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="nerd-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NERD_HOME": str(work / ".nerd")}
    env.pop("NERD_STORE", None)
    try:
        src = work / "sample"
        shutil.rmtree(src, ignore_errors=True)
        make_sample(src)
        first = nerd("dataset", "upload", str(src), "--name", "sample", "-m", "first upload", env=env)
        with open(src / "raw" / "reads-1.bin", "r+b") as f:  # an edit in the middle of a 12 MiB file
            f.seek(6 << 20)
            f.write(b"edited!")
        second = nerd("dataset", "upload", str(src), "--name", "sample", "-m", "one edit", env=env)
        again = nerd("dataset", "upload", str(src), "--name", "sample", env=env)
        dest = work / "restored"
        shutil.rmtree(dest, ignore_errors=True)
        down = nerd("dataset", "download", "sample", str(dest), env=env)
        log = nerd("dataset", "log", "sample", env=env)
        ok = tree_digest(src) == tree_digest(dest)
        print(f"store: {work / '.nerd' / 'store'}" + ("" if args.keep else " (temporary: --keep DIR keeps it)"))
        print(f"{'step':<28}{'total':>14}{'sent':>14}  snapshot")
        for label, r in (("first upload", first), ("after a 7-byte edit", second), ("unchanged re-upload", again)):
            print(f"{label:<28}{mib(r['bytes_total']):>14}{mib(r['bytes_uploaded']):>14}  {r['snapshot'][:12]}")
        print(f"download: {down['files']} files, {mib(down['bytes_total']).strip()} → {dest}")
        print(f"history: {len(log['snapshots'])} snapshots; restored copy identical: {'yes' if ok else 'NO'}")
        mount_ok = mount_demo(work, src, env)
        return 0 if ok and again["bytes_uploaded"] == 0 and mount_ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
