"""Progress reporting by injected callbacks (the CLI's bar is only one consumer)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Callable


@dataclass(frozen=True)
class Progress:
    phase: str  # "scan", "upload", "download"
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    bytes_sent: int = 0  # over the wire (after dedup and compression)


ProgressCallback = Callable[[Progress], None]


class Tracker:
    """Thread-safe counters that call the callback at most every ``interval`` seconds."""

    def __init__(self, phase: str, callback: ProgressCallback | None, files_total: int = 0,
                 bytes_total: int = 0, interval: float = 0.1) -> None:
        self._cb = callback
        self._lock = threading.Lock()
        self._state = Progress(phase, files_total=files_total, bytes_total=bytes_total)
        self._interval = interval
        self._last = 0.0

    def add(self, files: int = 0, nbytes: int = 0, sent: int = 0) -> None:
        with self._lock:
            s = self._state
            self._state = replace(s, files_done=s.files_done + files, bytes_done=s.bytes_done + nbytes,
                                  bytes_sent=s.bytes_sent + sent)
            now = time.monotonic()
            if self._cb is None or now - self._last < self._interval:
                return
            self._last = now
            state = self._state
        self._cb(state)

    def finish(self) -> Progress:
        with self._lock:
            state = self._state
        if self._cb is not None:
            self._cb(state)
        return state
