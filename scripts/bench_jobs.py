"""Benchmark: 1,000 trivial tasks on nerd's local backend vs. the same command through ``xargs -P <cores>``.

Each task writes one small file (its index) into its output directory:

- xargs:  ``seq 0 999 | xargs -P CORES -I{} sh -c 'CMD'`` with NERD_TASK_INDEX/NERD_OUTPUT set per task
  and output directories on local disk;
- nerd:   ``nerd run --runtime process --array 1000 --output bench:/out --wait sh -- -c 'CMD'``,
  which also uploads every task's output (deduplicated) and commits them as one snapshot.

Two nerd figures: "cold" (no worker running: `nerd run` starts them) and "warm" (workers already
started with `nerd worker start`). Everything lives in a temporary NERD_HOME with a file:// store.
Run once; it is not a test (``--tasks N`` to change the count).

    .venv/bin/python scripts/bench_jobs.py
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


def timed(argv: list[str], env: dict, **kw) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, **kw)
    return time.monotonic() - t0, r


def nerd(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nerdcli", *args], env=env, capture_output=True, text=True)


def run_job(env: dict, tasks: int, name: str) -> tuple[float, dict]:
    secs, r = timed([sys.executable, "-m", "nerdcli", "run", "--runtime", "process", "--array", str(tasks),
                     "--output", f"{name}:/out", "--output", "json", "--wait", "sh", "--", "-c", CMD], env)
    if r.returncode != 0:
        raise SystemExit(f"nerd run failed ({r.returncode}): {r.stderr.strip()}")
    return secs, json.loads(r.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="nerd-bench-jobs-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NERD_", "AWS_"))}
    env.update(NERD_HOME=str(work / "home"), NERD_WORK_DIR=str(work))
    try:
        out = work / "xargs-out"
        out.mkdir()
        script = f'export NERD_TASK_INDEX="$1" NERD_OUTPUT="{out}/$1"; mkdir "$NERD_OUTPUT"; {CMD}'
        seq = "\n".join(map(str, range(args.tasks))) + "\n"
        xargs_s, r = timed(["xargs", "-P", str(cores), "-I{}", "sh", "-c", script, "sh", "{}"], env, input=seq)
        assert r.returncode == 0 and len(os.listdir(out)) == args.tasks, r.stderr

        cold_s, cold = run_job(env, args.tasks, "bench-cold")
        assert cold["state"] == "succeeded" and cold["counts"] == {"succeeded": args.tasks}, cold
        nerd(env, "worker", "stop")
        nerd(env, "worker", "start", "-n", str(2 * cores))
        time.sleep(1.0)  # let them import
        warm_s, warm = run_job(env, args.tasks, "bench-warm")
        assert warm["state"] == "succeeded", warm
        # the same outputs again: every chunk and tree is already stored (dedup: no store writes)
        dedup_s, _ = run_job(env, args.tasks, "bench-warm")
        nerd(env, "worker", "stop")

        print(f"{args.tasks} tasks, {cores} cores, command: sh -c '{CMD}'")
        print(f"{'xargs -P ' + str(cores):<48}{xargs_s:8.2f} s")
        for label, secs in ((f"nerd run --wait (cold: starts {2 * cores} workers)", cold_s),
                            (f"nerd run --wait (warm: {2 * cores} workers running)", warm_s),
                            ("nerd run --wait (warm, outputs already stored)", dedup_s)):
            print(f"{label:<48}{secs:8.2f} s   {secs / xargs_s:5.2f}x xargs   "
                  f"{secs / args.tasks * 1000:6.2f} ms/task")
        return 0
    finally:
        nerd(env, "worker", "stop")
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
