"""The embedded default store: a folder on a local (or network) filesystem."""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from pathlib import Path
from typing import Iterator

from ..chunker import chunk_id
from ..errors import ObjectNotFound, RefConflict, StoreError


class LocalStore:
    """``file:///path``: one file per object, written to a temp name, fsync'd and renamed."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"store {self.url}: cannot create the folder ({e.strerror}) — check datasets.store") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreError(f"store {self.url}: folder is not writable — check its permissions or datasets.store")

    def _path(self, key: str) -> Path:
        return self.root / key

    def _fail(self, key: str, e: OSError) -> StoreError:
        hint = " — free some space" if e.errno == errno.ENOSPC else ""
        return StoreError(f"store {self.url}: {key}: {e.strerror}{hint}")

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectNotFound(key, self.url) from None
        except OSError as e:
            raise self._fail(key, e) from None

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fdatasync(f.fileno())
            os.rename(tmp, path)
        except OSError as e:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise self._fail(str(path.relative_to(self.root)), e) from None

    def put(self, key: str, data: bytes) -> None:
        self._write(self._path(key), data)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix)
        start = base if base.is_dir() else base.parent
        if not start.exists():
            return
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = os.path.relpath(os.path.join(dirpath, name), self.root)
                if key.startswith(prefix):
                    yield key

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._fail(key, e) from None

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.get(key)
        except ObjectNotFound:
            return None
        return data, chunk_id(data)

    def put_if(self, key: str, data: bytes, version: str | None) -> None:
        path = self._path(key)
        lock_path = self.root / "locks" / key
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        # A lock file per ref serialises writers on this filesystem; the
        # compare happens under the lock, the rename keeps readers atomic.
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.get_versioned(key)
            current_version = current[1] if current else None
            if current_version != version:
                raise RefConflict(f"{key} changed concurrently")
            self._write(path, data)

    def close(self) -> None:
        pass
