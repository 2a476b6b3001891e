"""``~/.nerd/session.json``: login state (seed schema: ``oauth``, ``jwt``, ``project``).

Written atomically with mode 0600 in a 0700 directory, because it holds
tokens. ``NERD_JWT`` and ``NERD_JWT_REFRESH_TOKEN`` override it, so a
container needs no files.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nerdfs import ConfigError

from .config import default_session_path


@dataclass
class Session:
    oauth: dict[str, Any] = field(default_factory=dict)
    jwt: str = ""
    project: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Session":
        p = Path(path) if path else default_session_path()
        try:
            doc = json.loads(p.read_text())
        except FileNotFoundError:
            doc = {}
        except json.JSONDecodeError as e:
            raise ConfigError(f"session {p}: not valid JSON (line {e.lineno}: {e.msg}) — delete it and run nerd login") from None
        except OSError as e:
            raise ConfigError(f"session {p}: cannot read it ({e.strerror})") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"session {p}: must be a JSON object — delete it and run nerd login")
        s = cls(oauth=doc.get("oauth") or {}, jwt=doc.get("jwt") or "", project=doc.get("project") or {}, path=p)
        if not isinstance(s.oauth, dict) or not isinstance(s.jwt, str) or not isinstance(s.project, dict):
            raise ConfigError(f"session {p}: oauth/project must be objects and jwt a string — delete it and run nerd login")
        if os.environ.get("NERD_JWT"):
            s.jwt = os.environ["NERD_JWT"]
        if os.environ.get("NERD_JWT_REFRESH_TOKEN"):
            s.oauth = {**s.oauth, "refresh_token": os.environ["NERD_JWT_REFRESH_TOKEN"]}
        return s

    def save(self) -> None:
        """Atomic write: temp file (0600) in the same directory, fsync, rename."""
        p = self.path or default_session_path()
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"oauth": self.oauth, "jwt": self.jwt, "project": self.project}, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, p)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
