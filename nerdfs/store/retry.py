"""Retries with exponential backoff and jitter around any store."""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, Iterator, TypeVar

from ..errors import TransientStoreError
from .base import Store

T = TypeVar("T")
log = logging.getLogger(__name__)


class RetryingStore:
    """Retries transient failures; permanent ones (and conflicts) pass straight through.

    A conditional ``put_if`` is retried too: if the first attempt did land and
    only its answer was lost, the retry reports a conflict, which callers
    resolve by re-reading the ref (see :mod:`nerdfs.refs`).
    """

    def __init__(self, inner: Store, attempts: int = 6, base_delay: float = 0.2, max_delay: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.inner = inner
        self.url = inner.url
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep

    def _call(self, fn: Callable[..., T], *args) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn(*args)
            except TransientStoreError as e:
                if attempt == self.attempts:
                    raise
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                log.debug("store %s: %s; retry %d/%d in %.2fs", self.url, e, attempt, self.attempts - 1, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def get(self, key: str) -> bytes:
        return self._call(self.inner.get, key)

    def put(self, key: str, data: bytes) -> None:
        self._call(self.inner.put, key, data)

    def exists(self, key: str) -> bool:
        return self._call(self.inner.exists, key)

    def list(self, prefix: str) -> Iterator[str]:
        return iter(self._call(lambda p: list(self.inner.list(p)), prefix))

    def delete(self, key: str) -> None:
        self._call(self.inner.delete, key)

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        return self._call(self.inner.get_versioned, key)

    def put_if(self, key: str, data: bytes, version: str | None) -> None:
        self._call(self.inner.put_if, key, data, version)

    def close(self) -> None:
        self.inner.close()
