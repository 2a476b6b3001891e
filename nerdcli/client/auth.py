"""Login to the identity provider, and the JWT every remote call carries.

:class:`Auth` runs the OAuth2 authorization-code flow with PKCE (S256) and a
CSPRNG ``state`` through the user's browser, with a one-shot callback server
on ``auth.oauth_localserver``. Endpoints come from the provider's discovery
document under ``auth.api_endpoint``. Every JWT is verified against
``auth.public_key`` with the algorithm pinned to that key's type, so a token
with ``alg: none`` or an HMAC signature made with the public key is refused.
An expired JWT is refreshed with the refresh token before use.

Nothing is written to the session unless a flow succeeded completely: the
session only ever holds tokens that verified.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import html
import http.server
import logging
import secrets
import socketserver
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from nerdfs.errors import AuthError, ConfigError

from ..config import Config
from ..session import Session

log = logging.getLogger(__name__)

LEEWAY = 30
"""Seconds of clock skew tolerated on ``exp``/``nbf``/``iat``."""
HTTP_TIMEOUT = 15.0
CALLBACK_PATH = "/callback"
RELOGIN = "run nerd login"

_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512", "secp256k1": "ES256K"}
_RSA_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]


class TokenExpired(AuthError):
    """A JWT whose signature is good but whose ``exp`` has passed: worth a refresh."""

    def __init__(self, message: str, expired_at: float) -> None:
        super().__init__(message)
        self.expired_at = expired_at


# --- keys and verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyKey:
    """The provider's public key and the only JWS algorithms it can have signed with."""

    key: Any
    algorithms: tuple[str, ...]
    kind: str


def load_public_key(pem: str, where: str = "auth.public_key") -> VerifyKey:
    """``auth.public_key``: PEM text (a public key or a certificate) or the path of a PEM file.

    The algorithms follow from the key type (EC curve → its ES algorithm, RSA → RS/PS,
    Ed25519/Ed448 → EdDSA); never ``none`` and never HMAC, whatever a token's header says.
    """
    text = pem.strip()
    if not text:
        raise ConfigError(f"{where} is not set — put the provider's PEM public key in the config")
    if not text.startswith("-----BEGIN"):
        try:
            text = Path(text).expanduser().read_text()
        except (OSError, ValueError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise ConfigError(f"{where}: neither a PEM block nor a readable PEM file ({reason})") from None
    data = text.strip().encode()
    try:
        if data.startswith(b"-----BEGIN CERTIFICATE"):
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"{where}: not a PEM public key ({e}) — paste the provider's "
                          f"'-----BEGIN PUBLIC KEY-----' block") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGORITHMS.get(key.curve.name)
        if alg is None:
            raise ConfigError(f"{where}: EC curve {key.curve.name} is not used for JWTs — use P-256, P-384 or P-521")
        return VerifyKey(key, (alg,), f"EC {key.curve.name}")
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ConfigError(f"{where}: a {key.key_size}-bit RSA key is too weak — use 2048 bits or more")
        return VerifyKey(key, tuple(_RSA_ALGORITHMS), f"RSA {key.key_size}")
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return VerifyKey(key, ("EdDSA",), "EdDSA")
    raise ConfigError(f"{where}: a {type(key).__name__} cannot verify JWTs — use an EC, RSA or Ed25519 key")


def verify(token: str, key: VerifyKey, *, source: str, leeway: float = LEEWAY) -> dict[str, Any]:
    """The claims of ``token`` if ``key`` signed it with a pinned algorithm and it has not expired.

    Raises :class:`TokenExpired` for a good signature past ``exp`` (+ leeway),
    :class:`AuthError` for anything else, naming ``source`` and the fix.
    """
    try:
        alg = jwt.get_unverified_header(token).get("alg")
    except jwt.InvalidTokenError:
        raise AuthError(f"{source}: not a JWT — {RELOGIN}") from None
    if alg not in key.algorithms:
        raise AuthError(f"{source}: the token is signed with alg {alg!r} but auth.public_key ({key.kind}) only "
                        f"verifies {', '.join(key.algorithms)} — {RELOGIN}")
    try:
        return jwt.decode(token, key.key, algorithms=list(key.algorithms), leeway=leeway,
                          options={"require": ["exp"], "verify_aud": False})
    except jwt.ExpiredSignatureError:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp", 0)  # signature already checked
        raise TokenExpired(f"{source}: the token expired at {_when(exp)} — {RELOGIN}", exp) from None
    except jwt.InvalidSignatureError:
        raise AuthError(f"{source}: the token's signature does not match auth.public_key (a tampered token or "
                        f"another provider's) — {RELOGIN}") from None
    except jwt.InvalidTokenError as e:
        raise AuthError(f"{source}: invalid token ({e}) — {RELOGIN}") from None


def describe(claims: dict[str, Any]) -> dict[str, Any]:
    """Who a token is for and until when, for ``nerd login --status``."""
    exp = float(claims["exp"])
    user = next((claims[c] for c in ("preferred_username", "email", "name", "sub") if claims.get(c)), "")
    return {"user": str(user), "subject": claims.get("sub"), "issuer": claims.get("iss"),
            "expires_at": _when(exp), "expires_in": int(exp - time.time())}


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _jwt_of(token: dict[str, Any]) -> str:
    """The JWT of a token response: the access token when it is one, else the OpenID ``id_token``."""
    for name in ("access_token", "id_token"):
        value = token.get(name)
        if isinstance(value, str) and value.count(".") == 2:
            return value
    raise AuthError("the provider's token response holds no JWT (neither access_token nor id_token) — "
                    "configure the client at the provider to issue JWT access tokens")


def s256(verifier: str) -> str:
    """The PKCE S256 code challenge: BASE64URL(SHA256(verifier)) without padding (RFC 7636 §4.2)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def authorization_url(endpoint: str, *, client_id: str, redirect_uri: str, state: str, code_challenge: str,
                      scope: str = "") -> str:
    """Where the browser starts: the authorization endpoint with the code-flow and PKCE parameters."""
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": state,
              "code_challenge": code_challenge, "code_challenge_method": "S256"}
    if scope:
        params["scope"] = scope
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}"


# --- provider endpoints ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    authorization: str
    token: str
    revocation: str = ""
    issuer: str = ""


def discover(api_endpoint: str, http: httpx.Client) -> Endpoints:
    """The provider's endpoints from its OpenID (or RFC 8414) discovery document.

    Without one, the conventional ``/authorize``, ``/token`` and ``/revoke`` under
    ``api_endpoint`` are used.
    """
    base = api_endpoint.rstrip("/")
    if urlsplit(base).scheme not in ("http", "https") or not urlsplit(base).netloc:
        raise ConfigError(f"auth.api_endpoint {api_endpoint!r} is not an http(s) URL — set the provider's base URL")
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        try:
            r = http.get(base + path)
        except httpx.HTTPError as e:
            raise AuthError(f"auth server {base}: unreachable ({e or type(e).__name__}) — check auth.api_endpoint "
                            "and the network") from None
        try:
            doc = r.json() if r.status_code == 200 else None
        except ValueError:
            doc = None
        if isinstance(doc, dict) and doc.get("authorization_endpoint") and doc.get("token_endpoint"):
            log.debug("endpoints from %s%s", base, path)
            return Endpoints(doc["authorization_endpoint"], doc["token_endpoint"],
                             doc.get("revocation_endpoint") or "", doc.get("issuer") or "")
        log.debug("no discovery document at %s%s (HTTP %d)", base, path, r.status_code)
    return Endpoints(f"{base}/authorize", f"{base}/token", f"{base}/revoke")


# --- the loopback callback ---------------------------------------------------------------------------------


def parse_localserver(value: str) -> tuple[str, int, str]:
    """``auth.oauth_localserver`` ``host:port[/path]`` → (host, port, path); path defaults to /callback."""
    hostport, slash, path = value.strip().partition("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"auth.oauth_localserver {value!r}: expected host:port such as localhost:9876")
    return host, int(port), f"/{path}" if slash else CALLBACK_PATH


class _CallbackServer(http.server.HTTPServer):
    """Answers the one redirect from the provider; ``finish`` turns its query into the browser's next URL."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.callback_path = path
        self.finish: Callable[[dict[str, str]], str | None] = lambda params: None
        self.outcome: BaseException | bool | None = None
        try:
            super().__init__((host, port), _CallbackHandler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"auth.oauth_localserver {host}:{port}: the port is in use by another program — "
                                  "close it, or set another port registered with the provider") from None
            raise ConfigError(f"auth.oauth_localserver {host}:{port}: cannot listen there ({e.strerror})") from None

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host, which can hang on a dead resolver."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def wait(self, seconds: float) -> None:
        """Serve until the callback came (raising its error, if any) or ``seconds`` passed."""
        deadline = time.monotonic() + seconds
        while self.outcome is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AuthError(f"no login arrived from the browser within {seconds:.0f} s — run nerd login again "
                                "(and approve it in the browser)")
            self.timeout = left
            self.handle_request()
        if isinstance(self.outcome, BaseException):
            raise self.outcome


class _CallbackHandler(http.server.BaseHTTPRequestHandler):
    server: _CallbackServer
    timeout = 10  # a browser that connects and says nothing does not hold the login

    def do_GET(self) -> None:  # noqa: N802 - the http.server interface
        url = urlsplit(self.path)
        log.debug("callback server: GET %s", url.path)  # never the query: it holds the code
        if url.path != self.server.callback_path or self.server.outcome is not None:
            self.send_error(404)
            return
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            location = self.server.finish(params)
        except Exception as e:  # noqa: BLE001 - shown in the browser, re-raised by wait()
            self.server.outcome = e
            msg = str(e) if isinstance(e, AuthError) else "internal error (see the terminal)"
            self._page(400, "Login failed", msg)
            return
        self.server.outcome = True
        if location:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._page(200, "Logged in", "nerd is logged in. You can close this tab.")

    def _page(self, status: int, title: str, message: str) -> None:
        body = (f"<!doctype html><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>"
                f"<p>{html.escape(message)}</p>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - request lines hold the code
        pass


# --- the flows ---------------------------------------------------------------------------------------------


class Auth:
    """Login, refresh, status and logout for one config and one (possibly env-overridden) session."""

    def __init__(self, config: Config, session: Session, *, warn: Callable[[str], None] | None = None,
                 http_timeout: float = HTTP_TIMEOUT) -> None:
        self.cfg = config.auth
        self.config_path = config.path
        self.session = session
        self.warn = warn or log.warning
        self.http_timeout = http_timeout
        self._key: VerifyKey | None = None
        self._endpoints: Endpoints | None = None

    # settings

    def _require(self, *names: str) -> None:
        for name in names:
            if not getattr(self.cfg, name):
                raise ConfigError(f"config {self.config_path}: auth.{name} is not set — add the identity "
                                  "provider's settings (see README, Login)")

    @property
    def key(self) -> VerifyKey:
        if self._key is None:
            self._require("public_key")
            self._key = load_public_key(self.cfg.public_key)
        return self._key

    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            self._require("api_endpoint")
            with httpx.Client(timeout=self.http_timeout, follow_redirects=True) as http:
                self._endpoints = discover(self.cfg.api_endpoint, http)
        return self._endpoints

    def _post(self, url: str, data: dict[str, str]) -> httpx.Response:
        self._require("client_id")
        try:
            return httpx.post(url, data={**data, "client_id": self.cfg.client_id},
                              headers={"Accept": "application/json"}, timeout=self.http_timeout)
        except httpx.HTTPError as e:
            raise AuthError(f"auth server {url}: unreachable ({e or type(e).__name__}) — check auth.api_endpoint "
                            "and the network") from None

    def _token_request(self, url: str, data: dict[str, str]) -> dict[str, Any]:
        """POST to the token endpoint (a public client: client_id, no secret); the token response or AuthError."""
        r = self._post(url, data)
        try:
            doc = r.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise AuthError(f"auth server {url}: HTTP {r.status_code} without a JSON token response — check "
                            f"auth.api_endpoint, then {RELOGIN}")
        if r.status_code != 200 or doc.get("error") or not doc.get("access_token"):
            error = str(doc.get("error") or f"HTTP {r.status_code}")
            detail = f"{error}: {doc['error_description']}" if doc.get("error_description") else error
            if error == "invalid_grant" and data["grant_type"] == "refresh_token":
                raise AuthError(f"your login expired (the provider refused the refresh token: {detail}) — {RELOGIN}")
            raise AuthError(f"auth server refused the token request ({detail}) — {RELOGIN}")
        if isinstance(doc.get("expires_in"), (int, float)):
            doc["expires_at"] = int(time.time() + doc["expires_in"])
        return doc

    # login

    def login(self, open_url: Callable[[str], Any], *, wait: float = 300.0) -> dict[str, Any]:
        """Authorization code + PKCE through the browser; the tokens are saved only once the JWT verifies.

        ``open_url`` gets the authorization URL (open a browser or print it);
        the provider then redirects the browser to the loopback callback, which
        exchanges the code and sends the browser on to ``auth.oauth_success_url``.
        """
        self._require("api_endpoint", "client_id", "public_key")
        key = self.key
        stored = Session.load(self.session.path, env=False)  # a malformed session fails here, before anything
        host, port, path = parse_localserver(self.cfg.oauth_localserver)
        redirect_uri = f"http://{host}:{port}{path}"
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 characters of the 43..128 PKCE allows
        result: dict[str, Any] = {}
        with _CallbackServer(host, port, path) as server:
            endpoints = self.endpoints()
            url = authorization_url(endpoints.authorization, client_id=self.cfg.client_id, redirect_uri=redirect_uri,
                                    state=state, code_challenge=s256(verifier), scope=self.cfg.scope)

            def finish(params: dict[str, str]) -> str | None:
                if not hmac.compare_digest(params.get("state", ""), state):  # first: errors can be forged too
                    raise AuthError("the login callback's state does not match this login (a stale browser tab or a "
                                    "forged request) — run nerd login again")
                if params.get("error"):
                    detail = f"{params['error']}: {params['error_description']}" if params.get(
                        "error_description") else params["error"]
                    what = "denied the login" if params["error"] == "access_denied" else "refused the login"
                    raise AuthError(f"the provider {what} ({detail}) — run nerd login again and approve access")
                if not params.get("code"):
                    raise AuthError("the login callback carried no authorization code — run nerd login again")
                token = self._token_request(endpoints.token, {
                    "grant_type": "authorization_code", "code": params["code"], "redirect_uri": redirect_uri,
                    "code_verifier": verifier})
                token_jwt = _jwt_of(token)
                claims = verify(token_jwt, key, source="the token from the provider")
                stored.oauth, stored.jwt = token, token_jwt
                stored.save()
                result.update(claims=claims)
                return self.cfg.oauth_success_url or None

            server.finish = finish
            open_url(url)
            server.wait(wait)
        if self.session.env:
            self.warn(f"{' and '.join(self.session.env)} set in the environment override the login just saved")
        self.session = stored
        return {"logged_in": True, **describe(result["claims"]), "source": stored.source,
                "refresh_token": bool(stored.refresh_token), "refreshed": False}

    # the token in use

    def current_token(self) -> str:
        """A JWT that verifies now: the session's, or a fresh one from the refresh token."""
        return self._current()[0]

    def status(self) -> dict[str, Any]:
        """Who is logged in and until when (refreshing an expired token first, as any command would)."""
        _, claims, refreshed = self._current()
        return {"logged_in": True, **describe(claims), "source": self.session.source,
                "refresh_token": bool(self.session.refresh_token), "refreshed": refreshed}

    def _current(self) -> tuple[str, dict[str, Any], bool]:
        s = self.session
        if not s.jwt and not s.refresh_token:
            raise AuthError("not logged in — run nerd login (or set NERD_JWT in a container or CI job)")
        if s.jwt:
            try:
                return s.jwt, verify(s.jwt, self.key, source=f"the JWT in {s.source}"), False
            except TokenExpired as e:
                if not s.refresh_token:
                    raise AuthError(f"your login expired at {_when(e.expired_at)} and {s.source} holds no refresh "
                                    f"token — {RELOGIN}") from None
                log.debug("JWT expired at %s; refreshing", _when(e.expired_at))
        token_jwt, claims = self.refresh()
        return token_jwt, claims, True

    def refresh(self) -> tuple[str, dict[str, Any]]:
        """New tokens for the session's refresh token, verified, then saved (kept in memory when from the env)."""
        s = self.session
        self._require("api_endpoint", "client_id", "public_key")
        key = self.key
        try:
            token = self._token_request(self.endpoints().token, {"grant_type": "refresh_token",
                                                                 "refresh_token": s.refresh_token})
        except AuthError:
            newer = self._newer_login()
            if newer is None:
                raise
            return newer
        token.setdefault("refresh_token", s.refresh_token)  # the provider may keep the old one valid
        token_jwt = _jwt_of(token)
        claims = verify(token_jwt, key, source="the refreshed token from the provider")
        s.oauth, s.jwt = token, token_jwt
        if not s.env:
            s.save()
        return token_jwt, claims

    def _newer_login(self) -> tuple[str, dict[str, Any]] | None:
        """Another nerd process may have refreshed (and so rotated the refresh token) first: use its JWT."""
        if self.session.env:
            return None
        disk = Session.load(self.session.path, env=False)
        if not disk.jwt or disk.jwt == self.session.jwt:
            return None
        try:
            claims = verify(disk.jwt, self.key, source=f"the JWT in {disk.source}")
        except AuthError:
            return None
        self.session = disk
        return disk.jwt, claims

    # logout

    def logout(self) -> dict[str, Any]:
        """Revoke the refresh token at the provider (when it offers revocation) and clear the session's tokens."""
        stored = Session.load(self.session.path, env=False)
        had = bool(stored.jwt or stored.oauth)
        revoked = False
        if stored.refresh_token and self.cfg.api_endpoint and self.cfg.client_id:
            try:
                endpoint = self.endpoints().revocation
                if endpoint:
                    r = self._post(endpoint, {"token": stored.refresh_token, "token_type_hint": "refresh_token"})
                    revoked = r.status_code == 200
                    if not revoked:
                        self.warn(f"the provider did not revoke the refresh token (HTTP {r.status_code}); it stays "
                                  "valid until it expires")
            except (AuthError, ConfigError) as e:
                self.warn(f"could not revoke the refresh token at the provider ({e}); it stays valid until it expires")
        if had:
            stored.oauth, stored.jwt = {}, ""
            stored.save()
        if self.session.env:
            self.warn(f"{' and '.join(self.session.env)} are still set in the environment and keep being used")
        return {"logged_out": had, "revoked": revoked, "session_file": str(stored.path)}



def current_token(config: Config, session: Session | None = None, *,
                  warn: Callable[[str], None] | None = None) -> str:
    """The JWT remote services get (e.g. the Slurm REST backend), refreshed first if it expired.

    ``session`` defaults to ``~/.nerd/session.json`` with NERD_JWT / NERD_JWT_REFRESH_TOKEN on top.
    """
    return Auth(config, session or Session.load(warn=warn), warn=warn).current_token()
