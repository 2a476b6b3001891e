"""Settings of the storage engine: the ``datasets`` section of ``~/.nerd/config.json``.

They live here, below the command line, so that ``nerdfs`` reads the same
settings as ``nerd`` without depending on it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .store import S3Options


def nerd_home() -> Path:
    return Path(os.environ.get("NERD_HOME", Path.home() / ".nerd"))


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(value: Any, what: str = "size") -> int:
    """``10GiB``, ``500M``, ``1.5T`` or a plain number of bytes (powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a size like 10GiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what}: must not be negative")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"{what}: expected a size like 10GiB or 500M, got {value!r}")
    number, unit = float(m.group(1)), m.group(2).lower()
    return int(number * 1024 ** " kmgtp".index(unit or " "))


@dataclass
class DatasetsConfig:
    store: str = ""  # default: file://<nerd home>/store
    cache_dir: str = ""  # default: <nerd home>/cache
    cache_size: int = 10 << 30
    threads: int = 8
    s3: S3Options = field(default_factory=S3Options)  # the `s3` object: endpoint_url, region, credentials…

    def store_url(self) -> str:
        url = os.environ.get("NERD_STORE") or self.store
        if not url:
            return f"file://{nerd_home() / 'store'}"
        if url.startswith("file://~") or url.startswith("~"):
            path = os.path.expanduser(url.removeprefix("file://"))
            return f"file://{path}"
        return url

    def cache_path(self) -> Path:
        return Path(os.path.expanduser(self.cache_dir)) if self.cache_dir else nerd_home() / "cache"


def typed(value: Any, kind: type | tuple, key: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if value is not None and not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{key} must be a {names}, got {json.dumps(value)}")
    return value


def section(cls: type, doc: Any, key: str, special: dict | None = None) -> Any:
    if doc is None:
        return cls()
    if not isinstance(doc, dict):
        raise ValueError(f"{key} must be an object")
    kwargs = {}
    known = {f.name: f for f in fields(cls)}
    for name, value in doc.items():
        if name not in known:
            continue  # tolerate keys from newer versions
        if special and name in special:
            kwargs[name] = special[name](value, f"{key}.{name}")
            continue
        default = getattr(cls(), name)
        kind = type(default) if default is not None else str
        if value is None and default is None:
            kwargs[name] = None
            continue
        kwargs[name] = typed(value, kind, f"{key}.{name}")
    return cls(**kwargs)


def datasets_section(doc: Any) -> DatasetsConfig:
    return section(DatasetsConfig, doc, "datasets", special={
        "cache_size": parse_size,
        "s3": lambda v, k: section(S3Options, v, k),
    })


def read_config_doc(path: str | os.PathLike) -> dict[str, Any] | None:
    """The parsed config file, None if it does not exist, or a ConfigError naming the problem."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"config {p}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config {p}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config {p}: must be a JSON object")
    return doc


def load_datasets(path: str | os.PathLike) -> DatasetsConfig:
    """Only the ``datasets`` section of a config file (defaults if the file does not exist)."""
    doc = read_config_doc(path) or {}
    try:
        return datasets_section(doc.get("datasets"))
    except ValueError as e:
        raise ConfigError(f"config {path}: {e}") from None
