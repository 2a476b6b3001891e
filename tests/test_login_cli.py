"""`nerd login` / `nerd logout` as a user runs them: real processes, a real OAuth2 server, a scripted browser."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from oauth_provider import CLIENT_ID, Provider, browse, forged_tokens, free_port, with_query

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def provider():
    with Provider("ec") as p:
        yield p


@pytest.fixture
def home(tmp_path, provider) -> Path:
    """A NERD_HOME whose config points at the provider."""
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    provider.register(f"http://localhost:{port}/callback")
    write_config(home, provider, port)
    return home


def write_config(home: Path, provider: Provider, port: int, **extra: Any) -> None:
    doc = {"auth": {"api_endpoint": provider.url, "public_key": provider.public_pem, "client_id": CLIENT_ID,
                    "oauth_localserver": f"localhost:{port}", "oauth_success_url": f"{provider.url}/logged-in"},
           **extra}
    (home / "config.json").write_text(json.dumps(doc))


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NERD_", "BROWSER"))}
    return {**env, "NERD_HOME": str(home), **extra}


def nerd(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nerdcli", *args], env=env_for(home, **env), capture_output=True,
                          text=True, timeout=60)


def assert_one_line_error(r: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nerd: error: ") and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def assert_login_failed(r: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    """A failed login: the URL it printed, then one error line (the last), the exit code, no traceback."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("nerd: error: ")] == lines[-1:] and "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[-1], lines[-1]


def login_no_browser(home: Path, *args: str, env: dict | None = None, **browse_kw: Any):
    """`nerd login --no-browser`: read the URL it prints, do the browser's part; (process result, last page)."""
    p = subprocess.Popen([sys.executable, "-m", "nerdcli", "login", "--no-browser", *args],
                         env=env_for(home, **(env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        head = []
        for line in p.stderr:
            head.append(line)
            if line.strip().startswith("http"):
                break
        else:
            p.wait(10)
            pytest.fail(f"no URL printed: {''.join(head)}")
        page = browse(line.strip(), **browse_kw)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:  # a failed test never leaves a login waiting for 300 s
            p.kill()
            p.wait()
    return subprocess.CompletedProcess(p.args, p.returncode, out, "".join(head) + err), page


def test_login_in_the_browser_then_status_and_logout(home, provider, tmp_path):
    browser = tmp_path / "browser"
    browser.write_text(f"#!/bin/sh\nexec {sys.executable} {TESTS / 'fake_browser.py'} \"$@\"\n")
    browser.chmod(0o755)
    result = tmp_path / "browser-result"
    r = nerd(["login"], home, BROWSER=str(browser), FAKE_BROWSER_RESULT=str(result))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Logged in as alice until ") and "Opening your browser" in r.stderr
    for _ in range(100):  # the browser's child process writes when its last page loaded
        if result.exists() and result.read_text():
            break
        time.sleep(0.05)
    assert result.read_text() == f"200 {provider.url}/logged-in"
    assert len(provider.pkce_verified) == 1
    session = home / "session.json"
    assert stat.S_IMODE(session.stat().st_mode) == 0o600 and stat.S_IMODE(home.stat().st_mode) == 0o700

    st = nerd(["login", "--status"], home)
    assert st.returncode == 0, st.stderr
    lines = st.stdout.splitlines()
    assert lines[0] == f"Logged in as alice at {provider.url}"
    assert lines[1].startswith("  token valid until ") and ("(in 59 min)" in lines[1] or "(in 1 h 0 min)" in lines[1])
    assert lines[2:] == ["  refresh token: yes", f"  from: session {session}"]

    doc = json.loads(nerd(["login", "--status", "-o", "json"], home).stdout)
    assert doc.keys() == {"logged_in", "user", "subject", "issuer", "expires_at", "expires_in", "source",
                          "refresh_token", "refreshed"}
    assert doc["logged_in"] is True and doc["user"] == "alice" and doc["source"] == f"session {session}"
    assert 3500 < doc["expires_in"] <= 3600 and doc["refreshed"] is False

    out = nerd(["logout", "-o", "json"], home)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"logged_out": True, "revoked": True, "session_file": str(session)}
    assert provider.valid_refresh_tokens() == set()
    assert_one_line_error(nerd(["login", "--status"], home), 8, "not logged in — run nerd login")
    again = nerd(["logout"], home)
    assert again.returncode == 0 and again.stdout.strip() == "Not logged in; nothing to do."


def test_login_no_browser_json(home, provider):
    r, page = login_no_browser(home, "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # exactly one JSON document on stdout
    assert doc["user"] == "alice" and doc["refresh_token"] is True
    assert "Open this URL in a browser to log in:" in r.stderr
    assert page.status_code == 200 and str(page.url) == f"{provider.url}/logged-in"
    assert json.loads((home / "session.json").read_text())["jwt"].count(".") == 2


def test_expired_token_refreshed_by_the_next_command(home, provider):
    rt = provider.refresh_token()
    (home / "session.json").write_text(json.dumps({"oauth": {"refresh_token": rt}, "jwt": provider.mint(lifetime=-300)}))
    doc = json.loads(nerd(["login", "--status", "-o", "json"], home).stdout)
    assert doc["refreshed"] is True and doc["expires_in"] > 3500
    saved = json.loads((home / "session.json").read_text())
    assert saved["oauth"]["refresh_token"] != rt and saved["oauth"]["refresh_token"] in provider.valid_refresh_tokens()


def test_env_tokens_with_no_session_file(home, provider):
    token = provider.mint(preferred_username="ci-bot")
    doc = json.loads(nerd(["login", "--status", "-o", "json"], home, NERD_JWT=token).stdout)
    assert doc["user"] == "ci-bot" and doc["source"] == "NERD_JWT" and doc["refresh_token"] is False
    printed = nerd(["login", "--print-token"], home, NERD_JWT=token)
    assert printed.returncode == 0 and printed.stdout.strip() == token

    rt = provider.refresh_token()
    r = nerd(["login", "--status", "-o", "json"], home, NERD_JWT=provider.mint(lifetime=-300),
             NERD_JWT_REFRESH_TOKEN=rt)
    doc = json.loads(r.stdout)
    assert doc["refreshed"] is True and doc["source"] == "NERD_JWT and NERD_JWT_REFRESH_TOKEN"
    assert not (home / "session.json").exists()
    assert sorted(p.name for p in home.iterdir()) == ["config.json"]

    expired = nerd(["login", "--status"], home, NERD_JWT=provider.mint(lifetime=-300))
    assert_one_line_error(expired, 8, "NERD_JWT holds no refresh token — run nerd login")
    assert not (home / "session.json").exists()


BAD_SESSIONS = [
    # (case, exit code, what the one line must say)
    ("tampered", 8, "signature does not match auth.public_key"),
    ("wrong key", 8, "signature does not match auth.public_key"),
    ("alg none", 8, "signed with alg 'none'"),
    ("HS256 with the public key", 8, "signed with alg 'HS256'"),
    ("expired without refresh token", 8, "your login expired at"),
    ("revoked refresh token", 8, "your login expired (the provider refused the refresh token"),
    ("malformed session", 3, "not valid JSON"),
    ("jwt not a string", 3, "jwt a string"),
]


@pytest.mark.parametrize("case, code, message", BAD_SESSIONS, ids=[c[0] for c in BAD_SESSIONS])
def test_bad_sessions_are_refused(home, provider, case, code, message):
    session = home / "session.json"
    forged = forged_tokens(provider)
    if case in forged:
        session.write_text(json.dumps({"oauth": {"refresh_token": provider.refresh_token()}, "jwt": forged[case]}))
    elif case == "expired without refresh token":
        session.write_text(json.dumps({"oauth": {}, "jwt": provider.mint(lifetime=-300)}))
    elif case == "revoked refresh token":
        session.write_text(json.dumps({"oauth": {"refresh_token": provider.refresh_token()},
                                       "jwt": provider.mint(lifetime=-300)}))
        provider.revoke_all()
    elif case == "malformed session":
        session.write_text('{"oauth": {"refresh_token": "x"}, "jwt": "a.b')
    else:
        session.write_text(json.dumps({"jwt": 42}))
    os.chmod(session, 0o600)
    before = session.read_bytes(), session.stat().st_mtime_ns
    r = nerd(["login", "--status"], home)
    assert_one_line_error(r, code, message, "run nerd login")
    js = nerd(["login", "--status", "-o", "json"], home)
    assert json.loads(js.stdout)["error"]["exit_code"] == code
    assert (session.read_bytes(), session.stat().st_mtime_ns) == before


def test_wrong_state_on_the_callback(home, provider):
    r, page = login_no_browser(home, callback=lambda loc: with_query(loc, state="forged-state"))
    assert_login_failed(r, 8, "state does not match this login", "run nerd login again")
    assert page.status_code == 400 and not (home / "session.json").exists()


def test_denied_consent(home):
    r, page = login_no_browser(home, approve=False)
    assert_login_failed(r, 8, "the provider denied the login (access_denied")
    assert not (home / "session.json").exists()


def test_callback_port_in_use(home, provider):
    port = free_port()
    write_config(home, provider, port)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        r = nerd(["login", "--no-browser"], home)
    assert_one_line_error(r, 3, f"auth.oauth_localserver localhost:{port}: the port is in use")
    assert not (home / "session.json").exists()


def test_timeout(home):
    (home / "session.json").write_text('{"oauth": {}, "jwt": "", "project": {"name": "p"}}')
    os.chmod(home / "session.json", 0o600)
    before = (home / "session.json").read_bytes()
    r = nerd(["login", "--no-browser", "--timeout", "1"], home)
    assert_login_failed(r, 8, "no login arrived from the browser within 1 s — run nerd login again (and approve "
                        "it in the browser)")
    assert (home / "session.json").read_bytes() == before


def test_missing_settings_name_the_config(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.json").write_text('{"auth": {"api_endpoint": "http://127.0.0.1:9"}}')
    assert_one_line_error(nerd(["login"], home), 3, f"config {home / 'config.json'}: auth.client_id is not set")
    r = nerd(["login", "--status", "--print-token"], home)
    assert_one_line_error(r, 2, "--status and --print-token do not go together")


def test_world_readable_session_warns_and_is_fixed(home, provider):
    session = home / "session.json"
    session.write_text(json.dumps({"oauth": {}, "jwt": provider.mint()}))
    os.chmod(session, 0o644)
    r = nerd(["login", "--status"], home)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith(f"nerd: warning: session {session} was readable by other users (mode 0644); it is "
                               "now 0600")
    assert stat.S_IMODE(session.stat().st_mode) == 0o600
    assert nerd(["login", "--status"], home).stderr == ""


def test_log_file_gets_output_and_debug_logs_but_no_tokens(home, provider, tmp_path):
    log = tmp_path / "logs" / "nerd.log"
    write_config(home, provider, int(json.loads((home / "config.json").read_text())["auth"]["oauth_localserver"]
                                     .split(":")[1]), logging={"enabled": True, "file_location": str(log)})
    r, _ = login_no_browser(home)
    assert r.returncode == 0, r.stderr
    session = json.loads((home / "session.json").read_text())
    printed = nerd(["login", "--print-token"], home)
    assert printed.stdout.strip() == session["jwt"]
    (home / "session.json").write_text(json.dumps({"oauth": {}, "jwt": "not-a-token"}))
    bad = nerd(["login", "--status"], home)
    assert bad.returncode == 8
    text = log.read_text()
    assert "Open this URL in a browser to log in" in text  # stderr output
    assert "stdout: Logged in as alice until" in text  # stdout output
    assert f"HTTP Request: POST {provider.url}/oauth/token" in text  # debug logs of the libraries
    assert "nerdcli.client.auth DEBUG endpoints from" in text  # and of nerd itself
    assert "stdout: (a secret, not logged)" in text
    assert "ERROR exit 8: the JWT in session" in text
    assert session["jwt"] not in text and session["oauth"]["refresh_token"] not in text
    assert r.stdout not in ("", None) and r.stderr.count("\n") < 10  # the terminal stays quiet

    # rotated at 10 MiB: a full log moves to nerd.log.1 and the next command starts a new one
    with open(log, "r+b") as f:
        f.truncate(10 << 20)
    assert nerd(["login", "--status"], home).returncode == 8
    assert (log.parent / "nerd.log.1").stat().st_size >= 10 << 20
    assert log.stat().st_size < 4096 and "ERROR exit 8:" in log.read_text()


def test_debug_logs_go_to_stderr_without_repeating_the_output(home, provider):
    (home / "session.json").write_text(json.dumps({"oauth": {"refresh_token": provider.refresh_token()},
                                                   "jwt": provider.mint(lifetime=-300)}))
    os.chmod(home / "session.json", 0o600)
    r = nerd(["--debug", "login", "--status"], home)
    assert r.returncode == 0 and r.stdout.startswith("Logged in as alice")
    assert "nerdcli.client.auth DEBUG JWT expired at" in r.stderr and "httpx INFO HTTP Request: POST" in r.stderr
    assert "Logged in as" not in r.stderr and "nerd.output" not in r.stderr


def test_help_has_examples():
    for cmd in (["login"], ["logout"]):
        r = subprocess.run([sys.executable, "-m", "nerdcli", *cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "Examples:" in r.stdout and "nerd " + cmd[0] in r.stdout
    top = subprocess.run([sys.executable, "-m", "nerdcli", "--help"], capture_output=True, text=True).stdout
    assert "login" in top and "logout" in top and "8  authentication error" in top
