"""``nerd job``: list, inspect, follow, cancel and wait for jobs."""

from __future__ import annotations

import sys

import click

from ..app import App, output_option, pass_app
from ..client import batch
from ..client.batch import Job


def _counts(job: Job) -> str:
    return " ".join(f"{n} {s}" for s, n in job.counts.items())


def _line(job: Job) -> str:
    code = "" if job.exit_code is None else f" exit {job.exit_code}"
    return f"{job.id}  {job.name[:20]:<20} {job.state:<10}{code:<8} {job.tasks:>6} tasks  {_counts(job)}"


def _describe(job: Job) -> str:
    lines = [_line(job), f"  image {job.image} ({job.runtime}, {job.backend}); submitted {job.submitted}"]
    for i in job.inputs:
        lines.append(f"  input  {i['dataset']}@{i['snapshot'][:12]}{'/' + i['path'] if i['path'] else ''} "
                     f"→ {i['dest']}")
    for d, s in job.outputs.items():
        lines.append(f"  output {d}@{s[:12]}")
    for f in job.failed:
        lines.append(f"  task {f['index']} failed (exit {f['exit_code']}): {f['error']}  "
                     f"— nerd job logs {job.id} --task {f['index']}")
    return "\n".join(lines)


@click.group()
def job() -> None:
    """Inspect and control jobs submitted with `nerd run`.

    JOB is a job id or a unique prefix of one (see `nerd job list`).
    """


@job.command("list")
@click.option("--limit", "-n", type=click.IntRange(min=1), help="Show only the newest N jobs.")
@output_option
@pass_app
def list_(app: App, limit: int | None) -> None:
    """List jobs, newest first.

    \b
    Example:
      nerd job list -n 10
      nerd job list -o json | jq -r '.jobs[] | select(.state=="failed") | .id'
    """
    jobs = batch.list_jobs(app.config, limit)
    app.out.emit({"jobs": [j.to_dict() for j in jobs]}, "\n".join(_line(j) for j in jobs) or "(no jobs)")


@job.command()
@click.argument("job_id", metavar="JOB")
@output_option
@pass_app
def status(app: App, job_id: str) -> int:
    """Show a job's state, task counts, inputs, outputs and failed tasks.

    Exit code 0 whatever the job's state (use `nerd job wait` for the job's).

    \b
    Example:
      nerd job status j-20261204-230501-3fa2c1 -o json | jq .counts
    """
    j = batch.get(job_id, app.config)
    app.out.emit(j.to_dict(), _describe(j))
    return 0


@job.command()
@click.argument("job_id", metavar="JOB")
@click.option("--task", "-t", type=int, help="Only this task's log (default: every task, lines prefixed [i]).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the job ends.")
@output_option
@pass_app
def logs(app: App, job_id: str, task: int | None, follow: bool) -> None:
    """Print the tasks' stdout and stderr (every attempt).

    \b
    Examples:
      nerd job logs JOB --task 3
      nerd job logs JOB --follow
      nerd job logs JOB -t 0 -o json | jq -r .log
    """
    if app.out.json:
        text = "".join(batch.logs(job_id, task, follow))
        app.out.emit({"job": job_id, "task": task, "log": text})
        return
    for chunk in batch.logs(job_id, task, follow):
        sys.stdout.write(chunk)
        sys.stdout.flush()


@job.command()
@click.argument("job_id", metavar="JOB")
@output_option
@pass_app
def cancel(app: App, job_id: str) -> None:
    """Cancel a job: pending tasks never start, running ones are killed (containers too).

    Outputs of tasks that already succeeded are still committed. Cancelling a
    finished job is an error (exit 5).

    \b
    Example:
      nerd job cancel j-20261204-230501-3fa2c1
    """
    j = batch.cancel(job_id, app.config)
    app.out.emit(j.to_dict(), _describe(j))


@job.command()
@click.argument("job_id", metavar="JOB")
@click.option("--timeout", type=float, metavar="SECONDS", help="Give up after this long (exit 1, job goes on).")
@output_option
@pass_app
def wait(app: App, job_id: str, timeout: float | None) -> int:
    """Wait until a job ends; exit with the job's exit code (0: every task succeeded).

    \b
    Example:
      nerd job wait $JOB && nerd dataset download results ./results
    """
    try:
        j = batch.wait(job_id, timeout, app.config)
    except TimeoutError as e:
        from nerdfs import NerdError

        raise NerdError(str(e)) from None
    app.out.emit(j.to_dict(), _describe(j))
    return int(j.exit_code or 0)
