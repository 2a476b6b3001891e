"""The ``nerd`` command: global options, error handling and exit codes.

Exit codes: 0 success, 1 internal error, 2 usage, 3 configuration, 4 not
found, 5 conflict, 6 store error, 7 integrity error, 130 interrupted.
"""

from __future__ import annotations

import os
import sys

import click

from nerdfs import __version__, console
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
      nerd login                               # once: a browser round trip
      nerd dataset upload ./genomes            # new snapshot of dataset "genomes"
      nerd dataset list --output json
      nerd dataset download genomes@3fa2 ./restore
    """
    ctx.obj = App(config_file, session_file, Output(fmt, debug))


def _register() -> None:
    from .commands.auth import login, logout
    from .commands.dataset import dataset
    from .commands.job import job
    from .commands.queue import queue
    from .commands.run import run
    from .commands.worker import worker

    for command in (dataset, login, logout, run, job, queue, worker):
        cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: one clear line per error, a documented exit code, tracebacks only with --debug."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or bool(os.environ.get("NERD_DEBUG"))
    console.run(cli, "nerd", args, debug=debug, debug_hint="run with --debug for details")
