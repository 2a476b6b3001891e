"""What both command lines (`nerd`, `nerdfs`) share: the entry-point error policy and byte formatting.

One clear line per error on stderr (plus a JSON error document on stdout
with ``--output json``), a documented exit code, tracebacks only on request.
"""

from __future__ import annotations

import json
import logging
import sys

import click

from .errors import NerdError


def human_bytes(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def run(group: click.Group, prog: str, args: list[str], *, debug: bool, debug_hint: str) -> None:
    """Run a click group as a program; never returns (exits with the command's code)."""
    json_out = wants_json(args)
    try:
        code = group.main(args=args, prog_name=prog, standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:
        where = f" — see '{e.ctx.command_path} --help'" if e.ctx else ""
        fail(prog, f"{e.format_message()}{where}", e.exit_code, "UsageError", json_out)
    except click.ClickException as e:
        fail(prog, e.format_message(), e.exit_code, "UsageError", json_out)
    except (KeyboardInterrupt, click.Abort):
        click.echo(f"{prog}: interrupted", err=True)
        sys.exit(130)
    except NerdError as e:
        if debug:
            raise
        fail(prog, str(e), e.exit_code, type(e).__name__, json_out)
    except Exception as e:  # noqa: BLE001 - the last line of defence
        if debug:
            raise
        fail(prog, f"internal error: {type(e).__name__}: {e} ({debug_hint})", 1, "InternalError", json_out)


def wants_json(args: list[str]) -> bool:
    for i, a in enumerate(args):
        if a in ("--output=json", "-ojson") or (a in ("--output", "-o") and args[i + 1:i + 2] == ["json"]):
            return True
    return False


def fail(prog: str, message: str, code: int, kind: str, json_out: bool) -> None:
    click.echo(f"{prog}: error: {message}", err=True)
    record = logging.getLogger(f"{prog}.output")  # for the log file, if there is one
    if not record.handlers:
        record.addHandler(logging.NullHandler())  # never the last-resort stderr handler: the line is printed
    record.error("exit %d: %s", code, message)
    if json_out:
        click.echo(json.dumps({"error": {"type": kind, "message": message, "exit_code": code}}))
    sys.exit(code)
