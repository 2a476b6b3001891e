"""``~/.nerd/session.json``: login state (seed schema: ``oauth``, ``jwt``, ``project``).

Written atomically with mode 0600 in a 0700 directory, because it holds
tokens. ``NERD_JWT`` and ``NERD_JWT_REFRESH_TOKEN`` override it, so a
container needs no files.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nerdfs import ConfigError

from .config import default_session_path, nerd_home


@dataclass
class Session:
    oauth: dict[str, Any] = field(default_factory=dict)
    jwt: str = ""
    project: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    env: tuple[str, ...] = ()
    """The variables (NERD_JWT, NERD_JWT_REFRESH_TOKEN) that override the file; never saved."""

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, env: bool = True,
             warn: Callable[[str], None] | None = None) -> "Session":
        """The session at ``path`` (default ``~/.nerd/session.json``), empty if missing.

        With ``env`` (the default) NERD_JWT and NERD_JWT_REFRESH_TOKEN override
        the file's tokens. A session other users can read is made 0600 and
        ``warn`` is told, since its tokens may have leaked.
        """
        p = Path(path) if path else default_session_path()
        _fix_permissions(p, warn or logging.getLogger(__name__).warning)
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
        if not isinstance(s.oauth.get("refresh_token", ""), str):
            raise ConfigError(f"session {p}: oauth.refresh_token must be a string — delete it and run nerd login")
        if not env:
            return s
        jwt, refresh = os.environ.get("NERD_JWT", ""), os.environ.get("NERD_JWT_REFRESH_TOKEN", "")
        if jwt or refresh:  # the environment replaces the file's tokens as a whole, never mixes with them
            s.jwt = jwt
            s.oauth = {"refresh_token": refresh} if refresh else {}
            s.env = tuple(name for name, value in (("NERD_JWT", jwt), ("NERD_JWT_REFRESH_TOKEN", refresh)) if value)
        return s

    @property
    def refresh_token(self) -> str:
        return self.oauth.get("refresh_token") or ""

    @property
    def source(self) -> str:
        """Where the tokens come from, for messages: the variable names or the file."""
        return " and ".join(self.env) if self.env else f"session {self.path or default_session_path()}"

    def save(self) -> None:
        """Atomic write: temp file (0600) in the same directory, fsync, rename.

        Refused while tokens come from the environment, so they never land in a file.
        """
        if self.env:
            raise AssertionError(f"session with tokens from {self.source} must not be saved")
        p = self.path or default_session_path()
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if p.parent == nerd_home() and stat.S_IMODE(p.parent.stat().st_mode) & 0o077:
            os.chmod(p.parent, 0o700)  # nerd's own directory; never a user-chosen one like /tmp
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


def _fix_permissions(p: Path, warn: Callable[[str], None]) -> None:
    """Tokens readable by other users: tell the user (they may have leaked) and make the file 0600."""
    try:
        mode = stat.S_IMODE(p.stat().st_mode)
    except OSError:
        return
    if mode & 0o077:
        try:
            os.chmod(p, 0o600)
        except OSError as e:
            warn(f"session {p} is readable by other users (mode {mode:04o}) and cannot be fixed ({e.strerror}) "
                 f"— run chmod 600 {p}")
            return
        warn(f"session {p} was readable by other users (mode {mode:04o}); it is now 0600 — if someone may "
             f"have read it, run nerd logout and nerd login")
