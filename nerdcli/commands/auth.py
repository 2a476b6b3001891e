"""``nerd login`` and ``nerd logout``: thin commands over :class:`nerdcli.client.auth.Auth`."""

from __future__ import annotations

import webbrowser
from typing import Any

import click

from nerdfs import UsageError

from ..app import App, output_option, pass_app
from ..client.auth import Auth


def _status_text(st: dict[str, Any]) -> str:
    left = st["expires_in"]
    span = f"{left // 3600} h {left % 3600 // 60} min" if left >= 3600 else f"{max(left, 0) // 60} min"
    lines = [f"Logged in as {st['user']}" + (f" at {st['issuer']}" if st.get("issuer") else ""),
             f"  token valid until {st['expires_at']} (in {span}){', just refreshed' if st['refreshed'] else ''}",
             f"  refresh token: {'yes' if st['refresh_token'] else 'no (run nerd login when the token expires)'}",
             f"  from: {st['source']}"]
    return "\n".join(lines)


@click.command()
@click.option("--no-browser", is_flag=True,
              help="Print the URL to open instead of starting a browser (e.g. over ssh: forward the callback port "
                   "with ssh -L 9876:localhost:9876).")
@click.option("--status", "show_status", is_flag=True,
              help="Show who is logged in and until when (refreshes an expired token, as any command would).")
@click.option("--print-token", is_flag=True,
              help="Print a valid JWT (refreshed if needed), e.g. for NERD_JWT in a container.")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds to wait for the login in the browser.")
@output_option
@pass_app
def login(app: App, no_browser: bool, show_status: bool, print_token: bool, timeout: float) -> None:
    """Log in through your browser (OAuth2 authorization code with PKCE).

    The provider comes from the config's auth section; the browser returns to
    a callback on auth.oauth_localserver (default localhost:9876). Tokens go to
    the session file (mode 0600) and are refreshed by themselves. In a
    container or CI job set NERD_JWT (or NERD_JWT_REFRESH_TOKEN) instead.

    \b
    Examples:
      nerd login
      nerd login --no-browser            # open the printed URL yourself
      nerd login --status
      nerd login --status -o json | jq -r .expires_at
      docker run -e NERD_JWT="$(nerd login --print-token)" my-nerd dataset list
    """
    if show_status and print_token:
        raise UsageError("--status and --print-token do not go together — pick one")
    auth = Auth(app.config, app.session(), warn=app.out.warn)
    if show_status:
        st = auth.status()
        app.out.emit(st, _status_text(st))
        return
    if print_token:
        token = auth.current_token()
        app.out.emit({"jwt": token}, token, secret=True)
        return

    def open_url(url: str) -> None:
        if no_browser:
            app.out.hint(f"Open this URL in a browser to log in:\n\n  {url}\n", always=True)
        else:
            app.out.hint(f"Opening your browser to log in. If it does not open, visit:\n\n  {url}\n", always=True)
            webbrowser.open(url)
        app.out.hint(f"Waiting up to {timeout:.0f} s for the login…")

    st = auth.login(open_url, wait=timeout)
    app.out.emit(st, f"Logged in as {st['user']} until {st['expires_at']}.")


@click.command()
@output_option
@pass_app
def logout(app: App) -> None:
    """Log out: revoke the refresh token at the provider and remove the tokens from the session file.

    \b
    Examples:
      nerd logout
      nerd logout -o json
    """
    r = Auth(app.config, app.session(), warn=app.out.warn).logout()
    text = "Logged out." if r["logged_out"] else "Not logged in; nothing to do."
    if r["revoked"]:
        text += " The refresh token is revoked at the provider."
    app.out.emit(r, text)
