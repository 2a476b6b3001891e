"""``nerd queue``: what the local backend's queue still works on."""

from __future__ import annotations

import click

from ..app import App, output_option, pass_app
from ..jobs.backend import open_backend


@click.group()
def queue() -> None:
    """The local backend's persistent queue (<nerd home>/jobs/queue.db)."""


@queue.command("list")
@output_option
@pass_app
def list_(app: App) -> None:
    """List unfinished jobs in the queue with pending/running/done task counts.

    \b
    Example:
      nerd queue list -o json | jq '.jobs[].pending'
    """
    from ..jobs.local import LocalBackend

    backend = open_backend(app.config)
    if not isinstance(backend, LocalBackend):
        backend = LocalBackend()
    rows = backend.queued()
    text = "\n".join(f"{r['job']}  {r['state']:<10} {r['pending']:>6} pending {r['running']:>4} running "
                     f"{r['done']:>6}/{r['tasks']} done" + (f"  (parallel {r['parallel']})" if r['parallel'] else "")
                     for r in rows) or "(queue empty)"
    app.out.emit({"jobs": rows}, text)
