"""Stores: where objects live. The only code that does I/O to them."""

from __future__ import annotations

import os
from urllib.parse import urlparse

from ..errors import ConfigError
from .base import Store
from .local import LocalStore
from .retry import RetryingStore
from .s3 import S3Options, S3Store

__all__ = ["Store", "LocalStore", "S3Store", "S3Options", "RetryingStore", "open_store"]


def open_store(url: str, s3: S3Options | None = None, *, retry_attempts: int = 6) -> Store:
    """A store for ``file:///path``, a plain path, or ``s3://bucket[/prefix]``, with retries."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"store {url}: file URLs take an absolute path, like file:///data/nerd-store")
        path = parsed.path if parsed.scheme == "file" else url
        if not path:
            raise ConfigError("store URL is empty — set datasets.store or NERD_STORE")
        inner: Store = LocalStore(os.path.abspath(os.path.expanduser(path)))
    elif parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"store {url}: no bucket — use s3://bucket/prefix")
        inner = S3Store(parsed.netloc, parsed.path, s3)
    else:
        raise ConfigError(f"store {url}: unsupported scheme {parsed.scheme!r} — use file:///path or s3://bucket/prefix")
    return RetryingStore(inner, attempts=retry_attempts)
