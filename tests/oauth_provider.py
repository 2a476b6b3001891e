"""A real OAuth2 authorization server for the login tests: Authlib's server side in a small Flask app.

It speaks the authorization-code grant with PKCE (S256 only, required for
the public client), rotating refresh tokens, RFC 7009 revocation and an
OpenID-style discovery document, and issues access tokens that are JWTs
signed with its own EC (ES256) or RSA (RS256) key. It runs in a thread on a
free loopback port; tests change its behaviour through the attributes.

:func:`browse` is the person at the browser: it opens the authorization URL,
approves or denies on the consent page and follows the redirects to the
CLI's loopback callback and on to the success page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import jwt
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask, request
from werkzeug.serving import make_server

CLIENT_ID = "nerd-cli"
USER = {"sub": "u-1001", "preferred_username": "alice"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_key(kind: str) -> Any:
    return ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)


def public_pem(key: Any) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@dataclass
class Client(ClientMixin):
    client_id: str
    redirect_uris: list[str]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str | None) -> str:
        return scope or ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return False  # a public client: it has no secret

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


@dataclass
class Code(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: dict
    code_challenge: str | None
    code_challenge_method: str | None

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class Token(TokenMixin):
    refresh_token: str
    client: Client
    user: dict
    scope: str
    revoked: bool = False

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return 0

    def is_expired(self) -> bool:
        return False

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> dict:
        return self.user

    def get_client(self) -> Client:
        return self.client


class Provider:
    """The authorization server; ``with Provider("ec") as p:`` serves it on ``p.url``."""

    def __init__(self, kind: str = "ec", key: Any = None) -> None:
        self.kind = kind
        self.alg = "ES256" if kind == "ec" else "RS256"
        self.key = key or new_key(kind)
        self.public_pem = public_pem(self.key)
        self.lifetime = 3600  # seconds; what the next access token is valid for
        self.discovery = True  # serve /.well-known/openid-configuration
        self.clients: dict[str, Client] = {}
        self.codes: dict[str, Code] = {}
        self.tokens: dict[str, Token] = {}
        self.pkce_verified: list[tuple[str, str]] = []  # (method, challenge) of every code redeemed with PKCE
        self.token_requests: list[dict[str, str]] = []
        self.revocations: list[str] = []
        self.app = self._app()
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> "Provider":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._thread.join()

    def register(self, redirect_uri: str, client_id: str = CLIENT_ID) -> None:
        self.clients[client_id] = Client(client_id, [redirect_uri])

    def mint(self, *, lifetime: int | None = None, key: Any = None, alg: str | None = None, **claims: Any) -> str:
        """An access token as this provider issues it (or signed with another ``key``/``alg``, for bad input)."""
        now = int(time.time())
        payload = {"iss": self.url, **USER, "aud": "nerd-api", "client_id": CLIENT_ID, "iat": now,
                   "exp": now + (self.lifetime if lifetime is None else lifetime), "jti": secrets.token_hex(8),
                   **claims}
        return jwt.encode(payload, key or self.key, algorithm=alg or self.alg, headers={"kid": "test"})

    def refresh_token(self, client_id: str = CLIENT_ID) -> str:
        """A refresh token as a login would have left it (for sessions and NERD_JWT_REFRESH_TOKEN)."""
        rt = secrets.token_urlsafe(32)
        self.tokens[rt] = Token(rt, self.clients[client_id], USER, "")
        return rt

    def revoke_all(self) -> None:
        for t in self.tokens.values():
            t.revoked = True

    def valid_refresh_tokens(self) -> set[str]:
        return {rt for rt, t in self.tokens.items() if not t.revoked}

    # the Flask app with Authlib's server

    def _app(self) -> Flask:
        provider = self
        app = Flask(__name__)
        server = AuthorizationServer(app, query_client=self.clients.get, save_token=self._save_token)
        server.register_token_generator("default", BearerTokenGenerator(
            lambda client, grant_type, user, scope: self.mint(scope=scope),
            lambda **kw: secrets.token_urlsafe(32),
            lambda client, grant_type: self.lifetime))

        class S256Only(CodeChallenge):
            SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

            def validate_code_verifier(self, grant, result):
                super().validate_code_verifier(grant, result)  # raises unless S256(verifier) == challenge
                code = grant.request.authorization_code
                provider.pkce_verified.append((code.code_challenge_method, code.code_challenge))

        class CodeGrant(grants.AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["none"]

            def save_authorization_code(self, code, req):
                data = req.payload.data
                provider.codes[code] = Code(code, req.client.client_id, req.payload.redirect_uri,
                                            req.payload.scope or "", req.user, data.get("code_challenge"),
                                            data.get("code_challenge_method"))

            def query_authorization_code(self, code, client):
                c = provider.codes.get(code)
                return c if c and c.client_id == client.client_id else None

            def delete_authorization_code(self, code):
                provider.codes.pop(code.code, None)

            def authenticate_user(self, code):
                return code.user

        class RefreshGrant(grants.RefreshTokenGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["none"]
            INCLUDE_NEW_REFRESH_TOKEN = True  # rotation: each refresh token works once

            def authenticate_refresh_token(self, refresh_token):
                t = provider.tokens.get(refresh_token)
                return t if t and not t.revoked else None

            def authenticate_user(self, token):
                return token.user

            def revoke_old_credential(self, token):
                token.revoked = True

        class Revocation(RevocationEndpoint):
            CLIENT_AUTH_METHODS = ["none"]

            def query_token(self, token_string, token_type_hint):
                return provider.tokens.get(token_string)

            def revoke_token(self, token, req):
                token.revoked = True
                provider.revocations.append(token.refresh_token)

        server.register_grant(CodeGrant, [S256Only(required=True)])
        server.register_grant(RefreshGrant)
        server.register_endpoint(Revocation)

        @app.get("/.well-known/openid-configuration")
        def discovery():
            if not self.discovery:
                return "not found", 404
            return {"issuer": self.url, "authorization_endpoint": f"{self.url}/oauth/authorize",
                    "token_endpoint": f"{self.url}/oauth/token", "revocation_endpoint": f"{self.url}/oauth/revoke",
                    "response_types_supported": ["code"], "code_challenge_methods_supported": ["S256"],
                    "grant_types_supported": ["authorization_code", "refresh_token"],
                    "token_endpoint_auth_methods_supported": ["none"]}

        # the conventional paths serve too, for clients that find no discovery document
        @app.route("/oauth/authorize", methods=["GET", "POST"])
        @app.route("/authorize", methods=["GET", "POST"])
        def authorize():
            try:
                grant = server.get_consent_grant(end_user=USER)
            except OAuth2Error as e:
                return f"<h1>Error</h1><p>{e.error}: {e.description}</p>", 400
            if request.method == "GET":
                return (f"<h1>Authorize {grant.client.client_id}</h1><form method=post>"
                        "<button name=confirm value=yes>Allow</button><button name=confirm value=no>Deny</button>"
                        "</form>")
            return server.create_authorization_response(
                grant=grant, grant_user=USER if request.form.get("confirm") == "yes" else None)

        @app.post("/oauth/token")
        @app.post("/token")
        def token():
            self.token_requests.append(request.form.to_dict())
            return server.create_token_response()

        @app.post("/oauth/revoke")
        @app.post("/revoke")
        def revoke():
            return server.create_endpoint_response(Revocation.ENDPOINT_NAME)

        @app.get("/logged-in")
        def logged_in():
            return "<h1>You are logged in to nerd</h1>"

        return app

    def _save_token(self, token: dict, req: Any) -> None:
        if token.get("refresh_token"):
            self.tokens[token["refresh_token"]] = Token(token["refresh_token"], req.client, req.user,
                                                        token.get("scope", ""))


def browse(url: str, *, approve: bool = True, callback: Callable[[str], str] | None = None,
           timeout: float = 15) -> httpx.Response:
    """A person at a browser: open ``url``, approve or deny, follow the redirects to the end.

    ``callback`` may rewrite the provider's redirect to the CLI (to forge a
    wrong ``state``); the last response is returned (the success page after a
    good login, the CLI's error page otherwise).
    """
    with httpx.Client(timeout=timeout) as browser:
        page = browser.get(url)
        assert page.status_code == 200 and "Authorize" in page.text, page.text
        answer = browser.post(url, data={"confirm": "yes" if approve else "no"})
        assert answer.status_code == 302, answer.text
        location = answer.headers["location"]
        if callback:
            location = callback(location)
        return browser.get(location, follow_redirects=True)


def with_query(url: str, **changes: str) -> str:
    """``url`` with some query parameters replaced."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _b64(doc: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


def forged_tokens(provider: Provider) -> dict[str, str]:
    """Tokens a verifier must refuse, each named by its flaw."""
    good = provider.mint()
    header, payload, sig = good.split(".")
    claims = jwt.decode(good, options={"verify_signature": False})
    hs_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{payload}"
    hs_sig = hmac.new(provider.public_pem.encode(), hs_input.encode(), hashlib.sha256).digest()
    return {
        "tampered": f"{header}.{_b64({**claims, 'sub': 'u-0', 'preferred_username': 'root'})}.{sig}",
        "wrong key": provider.mint(key=new_key("ec")),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "HS256 with the public key": f"{hs_input}.{base64.urlsafe_b64encode(hs_sig).rstrip(b'=').decode()}",
        "RS256 against an EC key": provider.mint(key=new_key("rsa"), alg="RS256"),
        "not a JWT": "hello",
        "no exp": provider.mint(exp=None),
    }
