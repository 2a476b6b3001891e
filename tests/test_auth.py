"""The login SDK (nerdcli.client.auth) against a real OAuth2 server on loopback, the browser driven by httpx."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import socket
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from nerdcli.client import auth as authmod
from nerdcli.client.auth import Auth, TokenExpired, load_public_key, verify
from nerdcli.config import Config
from nerdcli.session import Session
from nerdfs.errors import AuthError, ConfigError
from oauth_provider import CLIENT_ID, Provider, browse, forged_tokens, free_port, new_key, public_pem, with_query


@pytest.fixture(autouse=True)
def no_env_tokens(monkeypatch):
    monkeypatch.delenv("NERD_JWT", raising=False)
    monkeypatch.delenv("NERD_JWT_REFRESH_TOKEN", raising=False)


@pytest.fixture
def provider():
    with Provider("ec") as p:
        yield p


def make_config(tmp_path: Path, provider: Provider, **auth: Any) -> Config:
    port = free_port()
    provider.register(f"http://localhost:{port}/callback")
    doc = {"auth": {"api_endpoint": provider.url, "public_key": provider.public_pem, "client_id": CLIENT_ID,
                    "oauth_localserver": f"localhost:{port}", "oauth_success_url": f"{provider.url}/logged-in",
                    **auth}}
    (tmp_path / "config.json").write_text(json.dumps(doc))
    return Config.load(tmp_path / "config.json")


def session_path(tmp_path: Path) -> Path:
    return tmp_path / "nerd" / "session.json"


def new_auth(tmp_path: Path, cfg: Config, warnings: list[str] | None = None) -> Auth:
    w = warnings.append if warnings is not None else None
    return Auth(cfg, Session.load(session_path(tmp_path), warn=w), warn=w)


def run_login(auth: Auth, wait: float = 15, **browse_kw: Any) -> tuple[Any, httpx.Response]:
    """``auth.login`` with a browser in a thread; (status or the exception, the browser's last page)."""
    with ThreadPoolExecutor(1) as pool:
        started = []

        def open_url(url: str) -> None:
            started.append(pool.submit(browse, url, **browse_kw))

        try:
            result: Any = auth.login(open_url, wait=wait)
        except Exception as e:  # noqa: BLE001 - the caller asserts on it
            result = e
        return result, started[0].result()


@pytest.fixture
def logged_in(tmp_path, provider) -> Config:
    cfg = make_config(tmp_path, provider)
    st, _ = run_login(new_auth(tmp_path, cfg))
    assert isinstance(st, dict), st
    return cfg


def set_session_jwt(tmp_path: Path, token: str) -> bytes:
    p = session_path(tmp_path)
    doc = json.loads(p.read_text())
    doc["jwt"] = token
    p.write_text(json.dumps(doc))
    return p.read_bytes()


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_login_with_pkce_verified_by_the_server(tmp_path, kind):
    with Provider(kind) as provider:
        cfg = make_config(tmp_path, provider)
        st, page = run_login(new_auth(tmp_path, cfg))
        assert isinstance(st, dict), st
        assert st["user"] == "alice" and st["subject"] == "u-1001" and st["issuer"] == provider.url
        assert st["refresh_token"] is True and 3500 < st["expires_in"] <= 3600
        # the browser was sent on to auth.oauth_success_url
        assert str(page.url) == f"{provider.url}/logged-in" and page.status_code == 200
        # the server checked PKCE: S256 of the verifier sent to /token equals the challenge it stored
        [(method, challenge)] = provider.pkce_verified
        [req] = provider.token_requests
        assert method == "S256" and req["grant_type"] == "authorization_code"
        digest = hashlib.sha256(req["code_verifier"].encode()).digest()
        assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == challenge
        assert len(req["code_verifier"]) >= 43

        p = session_path(tmp_path)
        assert stat.S_IMODE(p.stat().st_mode) == 0o600 and stat.S_IMODE(p.parent.stat().st_mode) == 0o700
        doc = json.loads(p.read_text())
        claims = jwt.decode(doc["jwt"], provider.key.public_key(), algorithms=[provider.alg], audience="nerd-api")
        assert claims["sub"] == "u-1001"
        assert doc["oauth"]["refresh_token"] in provider.valid_refresh_tokens()
        assert doc["oauth"]["access_token"] == doc["jwt"]


def test_authorization_request_has_random_state_and_s256(tmp_path, provider):
    cfg = make_config(tmp_path, provider)
    urls = []
    for _ in range(2):
        with pytest.raises(AuthError, match="no login arrived"):
            new_auth(tmp_path, cfg).login(urls.append, wait=0.2)
    q1, q2 = (dict(httpx.URL(u).params) for u in urls)
    assert q1["code_challenge_method"] == "S256" and q1["response_type"] == "code"
    assert q1["redirect_uri"] == f"http://{cfg.auth.oauth_localserver}/callback"
    assert len(q1["state"]) >= 40 and q1["state"] != q2["state"] and q1["code_challenge"] != q2["code_challenge"]
    assert not session_path(tmp_path).exists()


def test_server_refuses_a_wrong_pkce_verifier(tmp_path, provider, monkeypatch):
    """The PKCE check is real: a challenge that does not match the verifier fails at the token endpoint."""
    cfg = make_config(tmp_path, provider)
    other = authmod.s256("a-different-verifier-" + "x" * 40)
    monkeypatch.setattr(authmod, "s256", lambda verifier: other)
    err, page = run_login(new_auth(tmp_path, cfg))
    assert isinstance(err, AuthError) and "invalid_grant" in str(err) and "Code challenge failed" in str(err)
    assert page.status_code == 400 and not session_path(tmp_path).exists() and provider.pkce_verified == []


def test_login_without_discovery_uses_conventional_paths(tmp_path, provider):
    provider.discovery = False
    cfg = make_config(tmp_path, provider)
    st, page = run_login(new_auth(tmp_path, cfg))
    assert isinstance(st, dict) and st["user"] == "alice" and len(provider.pkce_verified) == 1


def test_expired_jwt_is_refreshed_before_use(tmp_path, provider, logged_in):
    old = json.loads(session_path(tmp_path).read_text())
    set_session_jwt(tmp_path, provider.mint(lifetime=-120))
    auth = new_auth(tmp_path, logged_in)
    token = auth.current_token()
    claims = jwt.decode(token, provider.key.public_key(), algorithms=["ES256"], options={"verify_aud": False})
    assert claims["exp"] > claims["iat"]
    assert provider.token_requests[-1]["grant_type"] == "refresh_token"
    new = json.loads(session_path(tmp_path).read_text())
    assert new["jwt"] == token and new["oauth"]["refresh_token"] != old["oauth"]["refresh_token"]
    assert provider.valid_refresh_tokens() == {new["oauth"]["refresh_token"]}  # rotated
    assert new_auth(tmp_path, logged_in).current_token() == token  # the saved one is used now
    assert authmod.current_token(logged_in, Session.load(session_path(tmp_path))) == token
    assert len(provider.token_requests) == 2


def test_leeway_is_small(tmp_path, provider, logged_in):
    just_expired = provider.mint(lifetime=-10)
    set_session_jwt(tmp_path, just_expired)
    assert new_auth(tmp_path, logged_in).current_token() == just_expired  # within the 30 s leeway
    set_session_jwt(tmp_path, provider.mint(lifetime=-60))
    assert new_auth(tmp_path, logged_in).status()["refreshed"] is True


def test_revoked_refresh_token_means_login_again(tmp_path, provider, logged_in):
    before = set_session_jwt(tmp_path, provider.mint(lifetime=-120))
    provider.revoke_all()
    with pytest.raises(AuthError, match=r"your login expired .*invalid_grant.* — run nerd login"):
        new_auth(tmp_path, logged_in).current_token()
    assert session_path(tmp_path).read_bytes() == before


def test_provider_down_while_refreshing(tmp_path, logged_in):
    with Provider("ec") as other:  # a key pair whose server will be gone
        cfg = make_config(tmp_path, other)
        before = set_session_jwt(tmp_path, other.mint(lifetime=-120))
        url = other.url
    with pytest.raises(AuthError, match=f"auth server {url}: unreachable .* check auth.api_endpoint"):
        new_auth(tmp_path, cfg).current_token()
    assert session_path(tmp_path).read_bytes() == before


def test_expired_without_refresh_token(tmp_path, provider, logged_in):
    p = session_path(tmp_path)
    p.write_text(json.dumps({"oauth": {}, "jwt": provider.mint(lifetime=-120)}))
    before = p.read_bytes()
    with pytest.raises(AuthError, match=r"your login expired at .* holds no refresh token — run nerd login"):
        new_auth(tmp_path, logged_in).current_token()
    assert p.read_bytes() == before and provider.token_requests[-1]["grant_type"] == "authorization_code"


@pytest.mark.parametrize("name, message", [
    ("tampered", "signature does not match auth.public_key"),
    ("wrong key", "signature does not match auth.public_key"),
    ("alg none", "signed with alg 'none' but auth.public_key (EC secp256r1) only verifies ES256"),
    ("HS256 with the public key", "signed with alg 'HS256'"),
    ("RS256 against an EC key", "signed with alg 'RS256'"),
    ("not a JWT", "not a JWT"),
    ("no exp", "invalid token"),
])
def test_bad_tokens_are_refused_without_refresh(tmp_path, provider, logged_in, name, message):
    token = forged_tokens(provider)[name]
    before = set_session_jwt(tmp_path, token)
    requests = len(provider.token_requests)
    with pytest.raises(AuthError, match=re.escape(message)) as e:
        new_auth(tmp_path, logged_in).current_token()
    assert "run nerd login" in str(e.value) and "\n" not in str(e.value)
    assert session_path(tmp_path).read_bytes() == before and len(provider.token_requests) == requests


def test_the_forged_hs256_token_would_pass_a_naive_verifier(provider):
    """The HS256 forgery is the real attack: it verifies when the algorithm follows the token's header."""
    token = forged_tokens(provider)["HS256 with the public key"]
    sig_input, _, sig = token.rpartition(".")
    expected = hmac.new(provider.public_pem.encode(), sig_input.encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(sig + "==") == expected
    with pytest.raises(AuthError):
        verify(token, load_public_key(provider.public_pem), source="t")


@pytest.mark.parametrize("forge", [
    lambda loc: with_query(loc, state="forged"),
    lambda loc: with_query(loc.split("?")[0], error="access_denied", state="forged"),  # a forged error too
], ids=["code", "error"])
def test_wrong_state_on_the_callback(tmp_path, provider, forge):
    cfg = make_config(tmp_path, provider)
    err, page = run_login(new_auth(tmp_path, cfg), callback=forge)
    assert isinstance(err, AuthError) and "state does not match" in str(err)
    assert page.status_code == 400 and "state does not match" in page.text
    assert not session_path(tmp_path).exists() and provider.token_requests == []  # the code was never redeemed


def test_denied_consent(tmp_path, provider):
    cfg = make_config(tmp_path, provider)
    err, page = run_login(new_auth(tmp_path, cfg), approve=False)
    assert isinstance(err, AuthError) and "the provider denied the login (access_denied" in str(err)
    assert page.status_code == 400 and not session_path(tmp_path).exists()


def test_callback_port_in_use(tmp_path, provider):
    cfg = make_config(tmp_path, provider)
    host, port = cfg.auth.oauth_localserver.split(":")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", int(port)))
        busy.listen()
        opened = []
        with pytest.raises(ConfigError, match=f"localhost:{port}: the port is in use"):
            new_auth(tmp_path, cfg).login(opened.append, wait=5)
    assert opened == [] and not session_path(tmp_path).exists()


def test_timeout_waiting_for_the_browser(tmp_path, provider):
    cfg = make_config(tmp_path, provider)
    with pytest.raises(AuthError, match="no login arrived from the browser within 1 s"):
        new_auth(tmp_path, cfg).login(lambda url: None, wait=1)
    assert not session_path(tmp_path).exists()


def test_login_refuses_tokens_the_configured_key_did_not_sign(tmp_path, provider):
    cfg = make_config(tmp_path, provider, public_key=public_pem(new_key("ec")))
    err, page = run_login(new_auth(tmp_path, cfg))
    assert isinstance(err, AuthError) and "signature does not match auth.public_key" in str(err)
    assert page.status_code == 400 and not session_path(tmp_path).exists()
    cfg = make_config(tmp_path, provider, public_key=public_pem(new_key("rsa")))
    err, _ = run_login(new_auth(tmp_path, cfg))
    assert isinstance(err, AuthError) and "signed with alg 'ES256' but auth.public_key (RSA 2048)" in str(err)
    assert not session_path(tmp_path).exists()


def test_failed_login_leaves_an_existing_session_alone(tmp_path, provider, logged_in):
    before = session_path(tmp_path).read_bytes()
    err, _ = run_login(new_auth(tmp_path, logged_in), approve=False)
    assert isinstance(err, AuthError)
    assert session_path(tmp_path).read_bytes() == before


def test_logout_revokes_and_clears(tmp_path, provider, logged_in):
    rt = json.loads(session_path(tmp_path).read_text())["oauth"]["refresh_token"]
    r = new_auth(tmp_path, logged_in).logout()
    assert r == {"logged_out": True, "revoked": True, "session_file": str(session_path(tmp_path))}
    assert provider.revocations == [rt] and provider.valid_refresh_tokens() == set()
    doc = json.loads(session_path(tmp_path).read_text())
    assert doc["jwt"] == "" and doc["oauth"] == {}
    with pytest.raises(AuthError, match="not logged in"):
        new_auth(tmp_path, logged_in).current_token()
    assert new_auth(tmp_path, logged_in).logout()["logged_out"] is False


def test_env_tokens_override_and_are_never_saved(tmp_path, provider, logged_in, monkeypatch):
    file_before = session_path(tmp_path).read_bytes()
    rt = json.loads(file_before)["oauth"]["refresh_token"]
    env_jwt = provider.mint(preferred_username="ci-bot")
    monkeypatch.setenv("NERD_JWT", env_jwt)
    auth = new_auth(tmp_path, logged_in)
    st = auth.status()
    assert st["user"] == "ci-bot" and st["source"] == "NERD_JWT" and st["refresh_token"] is False
    # an expired NERD_JWT with NERD_JWT_REFRESH_TOKEN: refreshed in memory only
    monkeypatch.setenv("NERD_JWT", provider.mint(lifetime=-120))
    monkeypatch.setenv("NERD_JWT_REFRESH_TOKEN", rt)
    auth = new_auth(tmp_path, logged_in)
    token = auth.current_token()
    assert auth.status()["refreshed"] is False and auth.session.source == "NERD_JWT and NERD_JWT_REFRESH_TOKEN"
    assert token == auth.session.jwt and session_path(tmp_path).read_bytes() == file_before
    # a refresh token alone is enough
    monkeypatch.delenv("NERD_JWT")
    monkeypatch.setenv("NERD_JWT_REFRESH_TOKEN", auth.session.refresh_token)
    st = new_auth(tmp_path, logged_in).status()
    assert st["refreshed"] is True and st["user"] == "alice"
    assert session_path(tmp_path).read_bytes() == file_before


def test_concurrent_refresh_uses_the_winners_token(tmp_path, provider, logged_in):
    set_session_jwt(tmp_path, provider.mint(lifetime=-120))
    first, second = new_auth(tmp_path, logged_in), new_auth(tmp_path, logged_in)
    winner = first.current_token()
    assert second.current_token() == winner  # its refresh token was rotated away; it adopts the saved JWT


def test_world_readable_session_is_fixed_with_a_warning(tmp_path, provider, logged_in):
    p = session_path(tmp_path)
    os.chmod(p, 0o644)
    warnings: list[str] = []
    new_auth(tmp_path, logged_in, warnings).current_token()
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert len(warnings) == 1 and "readable by other users (mode 0644)" in warnings[0]


def test_malformed_session_is_refused_before_login(tmp_path, provider):
    cfg = make_config(tmp_path, provider)
    p = session_path(tmp_path)
    p.parent.mkdir()
    p.write_text('{"jwt": ')
    with pytest.raises(ConfigError, match=r"session .*session.json: not valid JSON .* delete it and run nerd login"):
        Auth(cfg, Session(path=p)).login(lambda url: pytest.fail("no login may start"), wait=5)
    assert p.read_text() == '{"jwt": '


def test_public_key_forms(tmp_path, provider):
    key = load_public_key(provider.public_pem)
    assert key.algorithms == ("ES256",)
    rsa_key = new_key("rsa")
    assert load_public_key(public_pem(rsa_key)).algorithms[0] == "RS256"
    assert "HS256" not in load_public_key(public_pem(rsa_key)).algorithms
    (tmp_path / "key.pem").write_text(provider.public_pem)
    assert load_public_key(str(tmp_path / "key.pem")).algorithms == ("ES256",)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "provider")])
    import datetime
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(provider.key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(provider.key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    token = provider.mint()
    assert verify(token, load_public_key(cert_pem), source="t")["sub"] == "u-1001"
    for bad, msg in [("", "is not set"), ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
                                           "not a PEM public key"), (str(tmp_path / "missing.pem"), "neither")]:
        with pytest.raises(ConfigError, match=msg):
            load_public_key(bad)
    with pytest.raises(TokenExpired):
        verify(provider.mint(lifetime=-100), key, source="t")
