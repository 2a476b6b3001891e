"""Job backends: where the tasks of a ``nerd run`` job execute (local queue, Slurm)."""

from .backend import Backend, open_backend
from .model import InputSpec, JobDir, JobSpec, OutputSpec, TaskRecord

__all__ = ["Backend", "open_backend", "InputSpec", "JobDir", "JobSpec", "OutputSpec", "TaskRecord"]
