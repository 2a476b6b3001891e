"""The small interface every job backend implements, and the choice of one by URL.

``nerd_api_endpoint`` in config.json (or ``--backend``) selects it:

- ``local`` (default): a persistent queue and worker processes on this machine
  (:mod:`nerdcli.jobs.local`);
- ``slurm://``: the Slurm command-line tools on this host;
- ``slurm+http://host:port`` / ``slurm+https://…``: slurmrestd with a JWT
  (both in :mod:`nerdcli.jobs.slurm`).

Job state, listing and logs are read from the job directory
(:mod:`nerdcli.jobs.model`); a backend only submits, refreshes what it alone
knows (tasks that died without writing their record), cancels and lists workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from nerdfs import ConfigError

from .model import JobSpec


@runtime_checkable
class Backend(Protocol):
    name: str

    def submit(self, job_dir: Path, spec: JobSpec) -> dict:
        """Queue the job's tasks; returns the backend_ref stored in job.json (e.g. the Slurm job id)."""
        ...

    def refresh(self, job_dir: Path) -> None:
        """Write tasks/<i>.json for tasks the backend knows ended abnormally; finalize when all are done."""
        ...

    def cancel(self, job_dir: Path) -> None:
        """Stop the job: pending tasks never start, running ones are killed (containers too)."""
        ...

    def workers(self) -> list[dict]:
        """What runs tasks (local worker processes); [] where that does not apply."""
        ...


def backend_name(endpoint: str | None) -> str:
    """``local`` or ``slurm`` for an endpoint URL, or a ConfigError naming the accepted forms."""
    ep = (endpoint or "local").strip()
    if ep in ("local", "local://"):
        return "local"
    if ep.startswith(("slurm://", "slurm+http://", "slurm+https://")) or ep == "slurm":
        return "slurm"
    raise ConfigError(f"nerd_api_endpoint {ep!r} is not a known backend — use local, slurm:// or "
                      "slurm+http(s)://host:port")


def open_backend(config=None, endpoint: str | None = None) -> Backend:
    """The backend ``endpoint`` (default: the config's ``nerd_api_endpoint``) names."""
    ep = endpoint if endpoint is not None else (config.nerd_api_endpoint if config is not None else "local")
    kind = backend_name(ep)
    if kind == "local":
        from .local import LocalBackend

        return LocalBackend(config=config)
    try:
        from . import slurm  # lazily: only Slurm users need it
    except ImportError as e:
        raise ConfigError(f"nerd_api_endpoint {ep!r}: the Slurm backend is not available in this installation "
                          f"({e})") from None
    return slurm.open_slurm(ep, config)


__all__ = ["Backend", "open_backend", "backend_name"]
