"""The ``nerd`` command: global options, error handling and exit codes.

Exit codes: 0 success, 1 internal error, 2 usage, 3 configuration, 4 not
found, 5 conflict, 6 store error, 7 integrity error, 130 interrupted.
"""

from __future__ import annotations

import os
import sys

import click

from nerdfs import NerdError, __version__
from nerdfs.errors import EXIT_CODES

from .app import App
from .output import Output

EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EPILOG)
@click.option("--config-file", type=click.Path(dir_okay=False), envvar="NERD_CONFIG_FILE",
              help="Config file (default ~/.nerd/config.json).")
@click.option("--session-file", type=click.Path(dir_okay=False), envvar="NERD_SESSION_FILE",
              help="Session file (default ~/.nerd/session.json).")
@click.option("--output", "-o", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="Output format: text or one JSON document on stdout.")
@click.option("--debug", is_flag=True, help="Show debug logs and tracebacks.")
@click.version_option(__version__, prog_name="nerd")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, session_file: str | None, fmt: str, debug: bool) -> None:
    """nerd: datasets that move only what changed, and jobs that run on them.

    \b
    Examples:
      nerd dataset upload ./genomes            # new snapshot of dataset "genomes"
      nerd dataset list --output json
      nerd dataset download genomes@3fa2 ./restore
    """
    ctx.obj = App(config_file, session_file, Output(fmt, debug))


def _register() -> None:
    from .commands.dataset import dataset

    cli.add_command(dataset)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: one clear line per error, a documented exit code, tracebacks only with --debug."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or bool(os.environ.get("NERD_DEBUG"))
    json_out = _wants_json(args)
    try:
        code = cli.main(args=args, prog_name="nerd", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:
        where = f" — see '{e.ctx.command_path} --help'" if e.ctx else ""
        _fail(f"{e.format_message()}{where}", e.exit_code, "UsageError", json_out)
    except click.ClickException as e:
        _fail(e.format_message(), e.exit_code, "UsageError", json_out)
    except click.Abort:
        click.echo("nerd: aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("nerd: interrupted", err=True)
        sys.exit(130)
    except NerdError as e:
        if debug:
            raise
        _fail(str(e), e.exit_code, type(e).__name__, json_out)
    except Exception as e:  # noqa: BLE001 - the last line of defence
        if debug:
            raise
        _fail(f"internal error: {type(e).__name__}: {e} (run with --debug for details)", 1, "InternalError",
              json_out)


def _wants_json(args: list[str]) -> bool:
    for i, a in enumerate(args):
        if a in ("--output=json", "-ojson") or (a in ("--output", "-o") and args[i + 1:i + 2] == ["json"]):
            return True
    return False


def _fail(message: str, code: int, kind: str, json_out: bool) -> None:
    click.echo(f"nerd: error: {message}", err=True)
    if json_out:
        import json

        click.echo(json.dumps({"error": {"type": kind, "message": message, "exit_code": code}}))
    sys.exit(code)
