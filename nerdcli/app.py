"""What every command gets: the options, the lazily loaded config and session, the output."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from .config import Config
from .output import OUTPUT_LOGGER, Output
from .session import Session


@dataclass
class App:
    """What every command gets: lazily loaded config and session, and the output."""

    config_file: str | None
    session_file: str | None
    out: Output
    _config: Config | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = Config.load(self.config_file)
            _setup_logging(self._config, self.out.debug)
        return self._config

    def session(self) -> Session:
        """The session file with NERD_JWT / NERD_JWT_REFRESH_TOKEN on top; a world-readable one is fixed (warned)."""
        self.config  # noqa: B018 - sets up the log file before anything is read
        return Session.load(self.session_file, warn=self.out.warn)


def _setup_logging(cfg: Config, debug: bool) -> None:
    """``--debug`` logs to stderr; ``logging.enabled`` sends debug logs and all command output to a rotated file."""
    root = logging.getLogger()
    if debug:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        handler.addFilter(lambda record: record.name != OUTPUT_LOGGER)  # already on the terminal
        root.addHandler(handler)
    if cfg.logging.enabled:
        path = Path(os.path.expanduser(cfg.logging.file_location))
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(path, maxBytes=10 << 20, backupCount=3)
        fh.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
        root.addHandler(fh)
    if debug or cfg.logging.enabled:
        root.setLevel(logging.DEBUG)
        for noisy in ("botocore", "urllib3", "boto3", "s3transfer", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.INFO)


def output_option(f):
    """``--output`` on a subcommand too, so it can go after the command's name."""

    def set_output(ctx: click.Context, _param, value: str | None) -> None:
        if value is not None:
            ctx.find_object(App).out.format = value

    return click.option("--output", "-o", type=click.Choice(["text", "json"]), default=None, expose_value=False,
                        callback=set_output, help="Output format: text or one JSON document on stdout.")(f)


pass_app = click.make_pass_decorator(App)
