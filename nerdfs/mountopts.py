"""What ``nerdfs mount`` hands to the filesystem: :class:`MountOptions`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .store import S3Options


@dataclass
class MountOptions:
    """Everything ``nerdfs.fuse.mount.run(options)`` needs; ``run`` blocks until the filesystem is unmounted.

    ``mountpoint`` is absolute and already checked (an existing, empty directory,
    not mounted); ``store`` is a store URL (``file://…`` or ``s3://bucket/prefix``)
    opened with ``s3``; ``cache_dir``/``cache_size`` (bytes) are the local cache;
    ``commit_interval`` is the period (seconds) of automatic commits of dirty
    datasets; ``refresh_interval`` the period of looking for other clients'
    snapshots (clean datasets follow them); ``threads`` bounds worker threads; ``foreground`` is informational
    (the CLI has already daemonised when needed: ``run`` never forks).

    Readiness: ``run`` calls :meth:`signal_ready` exactly when the filesystem is
    mounted and the control socket serves (after ``pyfuse3.init`` and
    ``control.serve`` has started, before entering ``pyfuse3.main``). If ``run``
    fails before that it may call ``signal_error(code, message)`` itself, or
    simply raise: the CLI then signals the exception (a :class:`NerdError`'s
    exit code, else 1). Both methods write one line to ``ready_fd`` — ``ok\\n`` or
    ``error <code> <message>\\n`` — and close it; only the first call counts and
    with ``ready_fd=None`` (a foreground mount) they do nothing. ``run`` must not
    touch ``ready_fd`` otherwise.
    """

    mountpoint: Path
    store: str
    s3: S3Options
    cache_dir: Path
    cache_size: int
    read_only: bool = False
    commit_interval: float = 60.0
    refresh_interval: float = 10.0
    foreground: bool = False
    threads: int = 8
    ready_fd: int | None = None  # pipe to the `nerdfs mount` that started this daemon
    _signalled: bool = field(default=False, init=False, repr=False, compare=False)

    @property
    def signalled(self) -> bool:
        return self._signalled

    def signal_ready(self) -> None:
        """Tell the waiting ``nerdfs mount`` that the filesystem is mounted (idempotent)."""
        self._signal("ok")

    def signal_error(self, code: int, message: str) -> None:
        """Tell the waiting ``nerdfs mount`` that mounting failed (ignored once anything was signalled)."""
        one_line = " ".join(str(message).split())
        self._signal(f"error {int(code)} {one_line}")

    def _signal(self, line: str) -> None:
        if self._signalled:
            return
        self._signalled = True
        if self.ready_fd is None:
            return
        fd, self.ready_fd = self.ready_fd, None
        try:
            os.write(fd, (line + "\n").encode())
        except OSError:
            pass  # the waiting command is gone (Ctrl-C): nothing to tell
        finally:
            os.close(fd)
