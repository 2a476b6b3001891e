"""``~/.nerd/config.json``: the seed schema plus a ``datasets`` section.

A missing file means defaults; a malformed one is a :class:`ConfigError` that
names the file, the key and the problem. ``NERD_STORE`` overrides the store.

Example::

    {
      "auth": {"api_endpoint": "https://auth.example.org", "public_key": "-----BEGIN PUBLIC KEY-----...",
               "client_id": "nerd-cli", "oauth_localserver": "localhost:9876",
               "oauth_success_url": "https://example.org/logged-in"},
      "logging": {"enabled": false, "file_location": "~/.nerd/nerd.log"},
      "nerd_api_endpoint": "local",
      "datasets": {"store": "s3://my-bucket/nerd", "cache_dir": "~/.nerd/cache", "cache_size": "20GiB",
                   "s3": {"endpoint_url": "http://127.0.0.1:8333", "region": "us-east-1"}}
    }
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nerdfs import ConfigError, S3Options


def nerd_home() -> Path:
    return Path(os.environ.get("NERD_HOME", Path.home() / ".nerd"))


def default_config_path() -> Path:
    return nerd_home() / "config.json"


def default_session_path() -> Path:
    return nerd_home() / "session.json"


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
class AuthConfig:
    api_endpoint: str = ""
    public_key: str = ""
    client_id: str = ""
    oauth_localserver: str = "localhost:9876"
    oauth_success_url: str = ""


@dataclass
class LoggingConfig:
    enabled: bool = False
    file_location: str = "~/.nerd/nerd.log"


@dataclass
class S3Config:
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    profile: str | None = None
    max_connections: int = 16

    def options(self) -> S3Options:
        return S3Options(endpoint_url=self.endpoint_url, region=self.region, access_key_id=self.access_key_id,
                         secret_access_key=self.secret_access_key, session_token=self.session_token,
                         profile=self.profile, max_connections=self.max_connections)


@dataclass
class DatasetsConfig:
    store: str = ""  # default: file://<nerd home>/store
    cache_dir: str = ""  # default: <nerd home>/cache
    cache_size: int = 10 << 30
    threads: int = 8
    s3: S3Config = field(default_factory=S3Config)

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


@dataclass
class Config:
    auth: AuthConfig = field(default_factory=AuthConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    nerd_api_endpoint: str = "local"
    datasets: DatasetsConfig = field(default_factory=DatasetsConfig)
    path: Path | None = None

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Config":
        """The config at ``path`` (default ``~/.nerd/config.json``); defaults if it does not exist."""
        p = Path(path) if path else default_config_path()
        try:
            text = p.read_text()
        except FileNotFoundError:
            return cls(path=p)
        except OSError as e:
            raise ConfigError(f"config {p}: cannot read it ({e.strerror})") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config {p}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"config {p}: must be a JSON object")
        try:
            cfg = cls(
                auth=_section(AuthConfig, doc.get("auth"), "auth"),
                logging=_section(LoggingConfig, doc.get("logging"), "logging"),
                nerd_api_endpoint=_typed(doc.get("nerd_api_endpoint", "local"), str, "nerd_api_endpoint"),
                datasets=_datasets(doc.get("datasets")),
                path=p,
            )
        except ValueError as e:
            raise ConfigError(f"config {p}: {e}") from None
        return cfg


def _typed(value: Any, kind: type | tuple, key: str) -> Any:
    if value is not None and not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{key} must be a {names}, got {json.dumps(value)}")
    return value


def _section(cls: type, doc: Any, key: str, special: dict | None = None) -> Any:
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
        kwargs[name] = _typed(value, kind, f"{key}.{name}")
    return cls(**kwargs)


def _datasets(doc: Any) -> DatasetsConfig:
    return _section(DatasetsConfig, doc, "datasets", special={
        "cache_size": parse_size,
        "s3": lambda v, k: _section(S3Config, v, k),
    })
