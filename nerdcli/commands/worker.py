"""``nerd worker``: the local backend's worker processes."""

from __future__ import annotations

import os

import click

from ..app import App, output_option, pass_app
from ..jobs.local import LocalBackend


def _line(w: dict) -> str:
    return (f"{w['id']:<40} pid {w['pid']:<8} {w['state']:<9} {w['tasks_done']:>6} tasks done"
            + (f"  running {w['task']}" if w["task"] else ""))


@click.group()
def worker() -> None:
    """Worker processes that run the local backend's tasks.

    `nerd run` starts workers on demand (two per core, at most one per waiting task;
    they exit after two idle minutes); start long-lived ones here.
    """


@worker.command()
@click.option("--count", "-n", type=click.IntRange(min=1), default=None,
              help="How many workers (default: one per core).")
@click.option("--idle-timeout", type=float, default=0.0, show_default=True,
              help="Seconds without work after which a worker exits (0: never).")
@output_option
@pass_app
def start(app: App, count: int | None, idle_timeout: float) -> None:
    """Start worker processes in the background (detached: they outlive this command).

    \b
    Example:
      nerd worker start -n 4
    """
    b = LocalBackend()
    b.reap()
    pids = [b.start_worker(auto=False, idle_timeout=idle_timeout) for _ in range(count or os.cpu_count() or 1)]
    app.out.emit({"started": pids}, f"started {len(pids)} workers: {' '.join(map(str, pids))}")


@worker.command()
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for them to exit.")
@output_option
@pass_app
def stop(app: App, timeout: float) -> None:
    """Stop every worker; a task they were running goes back to the queue.

    \b
    Example:
      nerd worker stop
    """
    stopped = LocalBackend().stop_workers(timeout)
    app.out.emit({"stopped": [w["pid"] for w in stopped]}, f"stopped {len(stopped)} workers")


@worker.command("list")
@output_option
@pass_app
def list_(app: App) -> None:
    """List live workers (dead ones are noticed here and their tasks re-queued).

    \b
    Example:
      nerd worker list -o json | jq '.workers | length'
    """
    ws = LocalBackend().workers()
    app.out.emit({"workers": ws}, "\n".join(_line(w) for w in ws) or "(no workers)")
