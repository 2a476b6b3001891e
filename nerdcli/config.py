"""``~/.nerd/config.json``: the seed schema plus a ``datasets`` section.

A missing file means defaults; a malformed one is a :class:`ConfigError` that
names the file, the key and the problem. ``NERD_STORE`` overrides the store.

Example::

    {
      "auth": {"api_endpoint": "https://auth.example.org", "public_key": "-----BEGIN PUBLIC KEY-----...",
               "client_id": "nerd-cli", "oauth_localserver": "localhost:9876",
               "oauth_success_url": "https://example.org/logged-in",
               "scope": "openid offline_access"},
      "logging": {"enabled": false, "file_location": "~/.nerd/nerd.log"},
      "nerd_api_endpoint": "local",
      "datasets": {"store": "s3://my-bucket/nerd", "cache_dir": "~/.nerd/cache", "cache_size": "20GiB",
                   "s3": {"endpoint_url": "http://127.0.0.1:8333", "region": "us-east-1"}}
    }
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from nerdfs import ConfigError, S3Options
from nerdfs.settings import (DatasetsConfig, datasets_section, nerd_home, parse_size, read_config_doc,
                             section, typed)

__all__ = ["Config", "AuthConfig", "LoggingConfig", "DatasetsConfig", "S3Options", "parse_size", "nerd_home",
           "default_config_path", "default_session_path"]


def default_config_path() -> Path:
    return nerd_home() / "config.json"


def default_session_path() -> Path:
    return nerd_home() / "session.json"


@dataclass
class AuthConfig:
    api_endpoint: str = ""
    public_key: str = ""
    client_id: str = ""
    oauth_localserver: str = "localhost:9876"
    oauth_success_url: str = ""
    scope: str = ""  # sent with the authorization request when set, e.g. "openid offline_access"


@dataclass
class LoggingConfig:
    enabled: bool = False
    file_location: str = "~/.nerd/nerd.log"


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
        doc = read_config_doc(p)
        if doc is None:
            return cls(path=p)
        try:
            cfg = cls(
                auth=section(AuthConfig, doc.get("auth"), "auth"),
                logging=section(LoggingConfig, doc.get("logging"), "logging"),
                nerd_api_endpoint=typed(doc.get("nerd_api_endpoint", "local"), str, "nerd_api_endpoint"),
                datasets=datasets_section(doc.get("datasets")),
                path=p,
            )
        except ValueError as e:
            raise ConfigError(f"config {p}: {e}") from None
        return cfg


