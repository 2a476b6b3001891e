"""The ``nerdfs`` command: maintenance of a store (the mount comes next).

Exit codes as for ``nerd``: 0 ok, 2 usage, 3 configuration, 6 store error,
7 integrity problems found.
"""

from __future__ import annotations

import json
import os
import sys

import click

from . import __version__
from .checker import Checker
from .errors import IntegrityError, NerdError
from .repo import Repository
from .settings import load_datasets, nerd_home


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nerdfs")
def cli() -> None:
    """nerdfs: the deduplicating storage engine behind nerd."""


@cli.command()
@click.option("--store", help="Store URL (default: datasets.store in the config, or NERD_STORE).")
@click.option("--config-file", type=click.Path(dir_okay=False), envvar="NERD_CONFIG_FILE",
              help="Config file (default ~/.nerd/config.json).")
@click.option("--read-data", is_flag=True, help="Also download and verify every chunk (slow: reads everything).")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text")
def check(store: str | None, config_file: str | None, read_data: bool, output: str) -> None:
    """Verify that every snapshot of every dataset is complete and intact.

    \b
    Examples:
      nerdfs check
      nerdfs check --store s3://bucket/nerd --read-data -o json
    """
    ds = load_datasets(config_file or nerd_home() / "config.json")
    with Repository.open(store or ds.store_url(), s3=ds.s3, cache_dir=ds.cache_path(),
                         cache_size=ds.cache_size, create=False) as repo:
        report = Checker(repo, threads=ds.threads).check(read_data=read_data)
    doc = {"store": repo.url, "ok": report.ok, "datasets": report.datasets, "snapshots": report.snapshots,
           "trees": report.trees, "chunks": report.chunks, "bytes": report.bytes, "problems": report.problems}
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
    else:
        for p in report.problems:
            click.echo(f"problem: {p}")
        click.echo(f"{repo.url}: {report.datasets} datasets, {report.snapshots} snapshots, {report.trees} trees, "
                   f"{report.chunks} chunks ({report.bytes} bytes): "
                   + ("ok" if report.ok else f"{len(report.problems)} problems"))
    if not report.ok:
        sys.exit(IntegrityError.exit_code)


def main() -> None:
    debug = bool(os.environ.get("NERD_DEBUG"))  # tracebacks on request
    try:
        cli.main(prog_name="nerdfs", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, click.Abort):
        click.echo("nerdfs: interrupted", err=True)
        sys.exit(130)
    except NerdError as e:
        if debug:
            raise
        click.echo(f"nerdfs: error: {e}", err=True)
        sys.exit(e.exit_code)
