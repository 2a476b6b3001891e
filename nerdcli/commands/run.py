"""``nerd run``: submit a job (one task or thousands) that reads datasets and writes a new one."""

from __future__ import annotations

import click

from ..app import App, pass_app
from ..client import batch
from ..jobs.model import RUNTIMES, new_job_id
from ..service import runspec


def _outputs(ctx: click.Context, _param, values: tuple[str, ...]) -> tuple[str, ...]:
    """``--output json|text`` is the output format (no DEST is a bare word); anything else an output."""
    keep = []
    for v in values:
        if v in ("json", "text"):
            ctx.find_object(App).out.format = v
        else:
            keep.append(v)
    return tuple(keep)


@click.command(context_settings={"allow_interspersed_args": False})
@click.argument("image")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--name", "-n", help="A name for the job (default: the image's name).")
@click.option("--input", "-i", "inputs", multiple=True, metavar="SRC[:DEST]",
              help="A directory in a nerdfs mount, a local directory (uploaded first) or dataset[@snapshot]; "
                   "DEST defaults to /input. Repeatable.")
@click.option("--output", "-o", "outputs", multiple=True, metavar="[DATASET:]DEST", callback=_outputs,
              help="A directory the tasks write; it becomes task-<i>/ in one new snapshot of DATASET "
                   "(default <job id>-output at /output). Repeatable. `--output json` (or text) instead "
                   "selects the output format, as for every command.")
@click.option("--env", "-e", "env", multiple=True, metavar="K=V", help="An environment variable. Repeatable.")
@click.option("--cpus", type=float, help="CPUs per task (enforced by the container runtime).")
@click.option("--memory", metavar="SIZE", help="Memory per task, e.g. 512MiB (a task above it is killed: OOM).")
@click.option("--time-limit", metavar="T", help="Per task attempt: 90s, 10m, 2h or HH:MM:SS (then exit code 124).")
@click.option("--array", type=int, metavar="N", help="Run N tasks; each sees NERD_TASK_INDEX=0..N-1.")
@click.option("--tasks", "tasks_file", metavar="FILE",
              help="One task per line of FILE, the line's words appended to the command ('-': stdin).")
@click.option("--parallel", "-p", type=int, metavar="P", help="At most P tasks of this job at once.")
@click.option("--retries", type=int, default=0, show_default=True, help="Re-run a failed task up to R times.")
@click.option("--runtime", type=click.Choice(RUNTIMES),
              help="podman, docker or process (default: podman or docker if installed, else process).")
@click.option("--backend", "-b", metavar="B",
              help="local, slurm:// or slurm+http(s)://HOST:PORT (default: nerd_api_endpoint in config.json).")
@click.option("--wait", "-w", is_flag=True, help="Wait for the job to end; exit with its exit code.")
@click.option("--fail-fast", is_flag=True, help="Cancel the job's other tasks as soon as one fails.")
@pass_app
def run(app: App, image: str, args: tuple[str, ...], name: str | None, inputs: tuple[str, ...],
        outputs: tuple[str, ...], env: tuple[str, ...], cpus: float | None, memory: str | None,
        time_limit: str | None, array: int | None, tasks_file: str | None, parallel: int | None, retries: int,
        runtime: str | None, backend: str | None, wait: bool, fail_fast: bool) -> int:
    """Run IMAGE [-- ARG…] as a job over pinned snapshots of your datasets; prints the job id.

    Inputs are pinned to immutable snapshots when the job is submitted (a path
    in a nerdfs mount is committed first), so the job is reproducible. Each
    task's output directory lands in task-<index>/ of one new snapshot of the
    output dataset, committed once when the job ends; with a nerdfs mount of
    the store it appears at MNT/<dataset>/task-<index>/.

    \b
    Containers (podman, docker): inputs are bind-mounted read-only at DEST,
    outputs read-write at theirs; images must exist locally (never pulled).
    The process runtime runs IMAGE as a program on this machine in a fresh
    work directory: DEST /data becomes <workdir>/data (the cwd), so use
    relative paths or the variables below; --cpus is not enforced there.
    Every task sees NERD_TASK_INDEX, NERD_JOB_ID, NERD_INPUT and NERD_OUTPUT
    (the first input/output), NERD_INPUT_<k> and NERD_OUTPUT_<k> (each, in
    option order), with the same meaning in every runtime.

    \b
    Examples:
      nerd run --input ~/nerd/genomes:/data --output counts:/out --array 100 \\
          localhost/tools:1 -- sh -c 'wc -l /data/* > /out/n-$NERD_TASK_INDEX'
      nerd run --runtime process --input genomes --output counts:/out --wait \\
          sh -- -c 'ls "$NERD_INPUT" > "$NERD_OUTPUT/list"'
      nerd run --tasks params.txt --parallel 4 --retries 2 localhost/sim:2 -- simulate
      JOB=$(nerd run ./sample-dir busybox -- true); nerd job wait $JOB
    """
    if args[:1] == ("--",):
        args = args[1:]
    cfg = app.config
    job_id = new_job_id()
    spec = runspec.build_spec(job_id=job_id, image=image, command=list(args), config=cfg, name=name,
                              inputs=list(inputs), outputs=list(outputs), env=list(env), cpus=cpus, memory=memory,
                              time_limit=time_limit, array=array, tasks_file=tasks_file, parallel=parallel,
                              retries=retries, runtime=runtime, fail_fast=fail_fast, warn=app.out.warn)
    job = batch.submit(spec, cfg, endpoint=backend, job_id=job_id)
    doc = {"job": job.id, "tasks": job.tasks,
           "inputs": [{"dataset": i.dataset, "snapshot": i.snapshot, "path": i.path} for i in spec.inputs],
           "outputs": [o.dataset for o in spec.outputs], "backend": job.backend, "runtime": spec.runtime}
    if not wait:
        app.out.emit(doc, job.id)
        return 0
    app.out.hint(f"{job.id}: {job.tasks} tasks submitted, waiting (Ctrl-C stops waiting, not the job)")
    job = batch.wait(job.id, config=cfg)
    doc.update(state=job.state, exit_code=job.exit_code, outputs=job.outputs, counts=job.counts,
               failed=job.failed)
    outs = ", ".join(f"{d}@{s[:12]}" for d, s in job.outputs.items()) or "no outputs"
    app.out.emit(doc, f"{job.id} {job.state} (exit {job.exit_code}): {outs}")
    return int(job.exit_code or 0)
