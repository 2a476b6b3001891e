"""A bounded worker pool for one-producer pipelines (chunks to send, chunks to fetch).

The producer blocks once ``in_flight`` items are queued, so memory stays
bounded however large the input; the first error stops new work and is
re-raised in the producer's thread when the pool closes.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable


class Workers:
    """``threads=0`` runs each item at once in the producer's thread: for a few small items,
    starting threads costs more than the work."""

    def __init__(self, threads: int, in_flight: int, name: str = "nerd-worker") -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name) if threads > 0 else None
        self._budget = threading.BoundedSemaphore(max(1, in_flight))
        self._errors: list[BaseException] = []

    @property
    def failed(self) -> bool:
        return bool(self._errors)

    def submit(self, fn: Callable[..., None], *args) -> bool:
        """Queue ``fn(*args)``, waiting for room; False (and nothing queued) once something failed."""
        self._budget.acquire()
        if self._errors:
            self._budget.release()
            return False
        if self._pool is None:
            self._run(fn, args)
        else:
            self._pool.submit(self._run, fn, args)
        return True

    def _run(self, fn: Callable[..., None], args: tuple) -> None:
        try:
            if not self._errors:
                fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the producer in close()
            self._errors.append(e)
        finally:
            self._budget.release()

    def close(self) -> None:
        """Wait for queued work; raise the first error any of it raised."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._errors:
            raise self._errors[0]

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # the producer failed: stop, wait for what is running, keep the producer's error
            self._errors.append(exc)
            if self._pool is not None:
                self._pool.shutdown(wait=True)
