"""Benchmark, the Slurm half: N trivial tasks through nerd on Slurm vs. a raw ``sbatch --array`` of the same script.

Each task writes one small file (its index) into its output directory:

- raw:   ``sbatch --array=0-(N-1)`` of ``sh -c CMD`` with NERD_TASK_INDEX/NERD_OUTPUT set per task and
  output directories on local disk, squeue polled every 0.1 s until the array is gone (``sbatch --wait``
  polls every few seconds, which would flatter nerd);
- nerd:  ``nerd run --backend slurm:// --runtime process --array N --output bench:/out --wait sh -- -c CMD``,
  which also runs nerd's task wrapper per task (Python), uploads every task's output (deduplicated) and
  commits them as one snapshot.

Both run on the same cluster, one after the other, and the ratio of wall times is printed (target ≤ 1.1x).
By default a private single-node cluster is started with the test suite's ``tests/infra/slurm.py``
(root, Debian's Slurm packages as installed by ``scripts/test.sh``); ``--existing`` uses the Slurm this
environment is configured for (SLURM_CONF or configless) instead. Run once; it is not a test.

    .venv/bin/python scripts/bench_jobs_slurm.py [--tasks 200] [--existing]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CMD = 'echo "task $NERD_TASK_INDEX" > "$NERD_OUTPUT/out.txt"'


def bench_slurm(tasks: int, env: dict, work: Path) -> dict:
    """Run both sides on the Slurm ``env`` points at; returns the wall times (s) and their ratio."""
    out = work / "raw-out"
    out.mkdir()
    script = ("#!/bin/sh\n"
              f'export NERD_TASK_INDEX="$SLURM_ARRAY_TASK_ID" NERD_OUTPUT="{out}/$SLURM_ARRAY_TASK_ID"\n'
              f'mkdir -p "$NERD_OUTPUT"\n{CMD}\n')
    t0 = time.monotonic()
    r = subprocess.run(["sbatch", "--parsable", f"--array=0-{tasks - 1}", "--output=/dev/null", f"--chdir={work}"],
                       input=script, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"raw sbatch --array failed ({r.returncode}): {r.stderr.strip()}")
    job = r.stdout.strip().split(";")[0]
    # `sbatch --wait` polls every few seconds; poll squeue as often as `nerd run --wait` looks for its result
    while subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], env=env, capture_output=True,
                         text=True).stdout.strip():
        time.sleep(0.1)
    raw_s = time.monotonic() - t0
    if len(os.listdir(out)) != tasks:
        raise SystemExit(f"raw sbatch --array: {len(os.listdir(out))} of {tasks} tasks wrote their output")

    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "nerdcli", "run", "--backend", "slurm://", "--runtime", "process",
                        "--array", str(tasks), "--output", "bench:/out", "--output", "json", "--wait", "sh", "--",
                        "-c", CMD], env=env, capture_output=True, text=True)
    nerd_s = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"nerd run failed ({r.returncode}): {r.stderr.strip()}")
    doc = json.loads(r.stdout)
    if doc["counts"] != {"succeeded": tasks}:
        raise SystemExit(f"nerd run: not every task succeeded: {doc['counts']}")
    return {"tasks": tasks, "raw_s": raw_s, "nerd_s": nerd_s, "ratio": nerd_s / raw_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--existing", action="store_true", help="use the Slurm SLURM_CONF points at; start none")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nerd-bench-slurm-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NERD_", "AWS_"))}
    env.update(NERD_HOME=str(work / "home"), NERD_STORE=f"file://{work / 'store'}", NERD_WORK_DIR=str(work))
    cluster = None
    try:
        if not args.existing:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from infra.slurm import Slurm

            t0 = time.monotonic()
            cluster = Slurm().start()
            print(f"started a private single-node Slurm in {time.monotonic() - t0:.1f} s", file=sys.stderr)
            env.update(cluster.env)
        res = bench_slurm(args.tasks, env, work)
        cpus = subprocess.run(["sinfo", "-h", "-o", "%C"], env=env, capture_output=True, text=True).stdout.strip()
        print(f"{res['tasks']} tasks on Slurm (CPUs A/I/O/T {cpus}), command: sh -c '{CMD}'")
        print(f"{'raw sbatch --array (+ squeue polling)':<44}{res['raw_s']:8.2f} s")
        print(f"{'nerd run --backend slurm:// --wait':<44}{res['nerd_s']:8.2f} s   {res['ratio']:5.2f}x raw   "
              f"{res['nerd_s'] / res['tasks'] * 1000:6.1f} ms/task")
        return 0
    finally:
        if cluster is not None:
            cluster.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
