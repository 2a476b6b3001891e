"""Where output goes: data on stdout (text or one JSON document), everything else on stderr."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from typing import Any, Iterator

import click
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress as Bar, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

from nerdfs import Progress, ProgressCallback
from nerdfs.console import human_bytes  # noqa: F401 - part of this module's surface

OUTPUT_LOGGER = "nerd.output"
"""Everything a command prints is also logged here, so ``logging.enabled`` keeps a record of it."""
_log = logging.getLogger(OUTPUT_LOGGER)
_log.addHandler(logging.NullHandler())  # printed already: never again through logging's last-resort handler


class Output:
    def __init__(self, fmt: str = "text", debug: bool = False) -> None:
        self.format = fmt
        self.debug = debug
        self.err = Console(stderr=True, highlight=False)

    @property
    def json(self) -> bool:
        return self.format == "json"

    def emit(self, doc: Any, text: str | None = None, *, secret: bool = False) -> None:
        """The command's result: one JSON document, or human text (kept out of the log file if ``secret``)."""
        if self.json:
            out = json.dumps(doc, indent=2, sort_keys=False, default=str)
        elif text is not None:
            out = text
        else:
            return
        click.echo(out)
        _log.info("stdout: %s", "(a secret, not logged)" if secret else out)

    def warn(self, message: str) -> None:
        click.echo(f"nerd: warning: {message}", err=True)
        _log.warning("%s", message)

    def hint(self, message: str, *, always: bool = False) -> None:
        """A note for the person at the terminal (stderr); ``always`` prints it with JSON output too."""
        if always or not self.json:
            click.echo(message, err=True)
            _log.info("stderr: %s", message)

    @contextlib.contextmanager
    def progress(self, description: str) -> Iterator[ProgressCallback | None]:
        """A progress-bar callback on stderr, or None when stderr is not a terminal or output is JSON."""
        if self.json or not sys.stderr.isatty():
            yield None
            return
        bar = Bar(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                  TransferSpeedColumn(), TextColumn("{task.fields[files]}"), TimeRemainingColumn(),
                  console=self.err, transient=True)
        task = bar.add_task(description, total=None, files="")

        def update(p: Progress) -> None:
            label = "scanning" if p.phase == "scan" else description
            files = f"{p.files_done}/{p.files_total} files" if p.files_total else f"{p.files_done} files"
            bar.update(task, description=label, completed=p.bytes_done,
                       total=p.bytes_total if p.phase != "scan" else None, files=files)

        with bar:
            yield update
