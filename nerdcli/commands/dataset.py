"""``nerd dataset``: upload, download, list, log and delete datasets without a mount."""

from __future__ import annotations

import sys

import click

from nerdfs import Datasets, NotFound

from ..app import App, output_option, pass_app
from ..output import human_bytes
from ..service import datatransfer

@click.group()
def dataset() -> None:
    """Move datasets between this machine and the store.

    Only chunks the store has never seen are sent: re-uploading an unchanged
    directory sends nothing, and an edit sends about one chunk (~1 MiB).
    """


@dataset.command()
@click.argument("directory", type=click.Path(path_type=str))
@click.option("--name", "-n", help="Dataset name (default: the directory's name).")
@click.option("--message", "-m", default="", help="A note kept with the snapshot.")
@output_option
@pass_app
def upload(app: App, directory: str, name: str | None, message: str) -> None:
    """Upload DIRECTORY as a new snapshot of a dataset (created if new).

    \b
    Examples:
      nerd dataset upload ./genomes
      nerd dataset upload ./run-42 --name results -m "sweep 42"
      nerd dataset upload ./data -o json | jq .bytes_uploaded
    """
    with app.out.progress("uploading") as progress:
        r = datatransfer.upload(directory, name, message=message, config=app.config, progress=progress,
                                warn=app.out.warn)
    saved = r.bytes_total - r.bytes_uploaded
    state = "new snapshot" if r.changed else "unchanged, head stays at"
    app.out.emit(r.to_dict(), (
        f"{r.dataset}: {state} {r.snapshot[:12]}\n"
        f"  {r.files} files, {human_bytes(r.bytes_total)}; sent {human_bytes(r.bytes_uploaded)} "
        f"({r.chunks_new} new of {r.chunks_total} chunks, {human_bytes(max(saved, 0))} deduplicated) "
        f"in {r.seconds:.1f}s"
    ))


@dataset.command()
@click.argument("spec", metavar="NAME[@SNAPSHOT]")
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
@click.option("--force", "-f", is_flag=True, help="Restore into a non-empty directory, replacing files.")
@output_option
@pass_app
def download(app: App, spec: str, directory: str, force: bool) -> None:
    """Restore a dataset's head (or SNAPSHOT, an id or unique prefix) into DIRECTORY.

    Files, directories, symlinks, modes and mtimes are restored; each file
    appears under its name only once it is complete.

    \b
    Examples:
      nerd dataset download genomes ./genomes
      nerd dataset download genomes@3fa2c1 ./old --force
    """
    with app.out.progress("downloading") as progress:
        r = datatransfer.download(spec, directory, force=force, config=app.config, progress=progress)
    app.out.emit(r.to_dict(), f"{r.dataset}@{r.snapshot[:12]} → {r.path}: {r.files} files, "
                              f"{human_bytes(r.bytes_total)} in {r.seconds:.1f}s")


@dataset.command("list")
@output_option
@pass_app
def list_(app: App) -> None:
    """List datasets with their head snapshot.

    \b
    Example:
      nerd dataset list -o json | jq -r '.datasets[].name'
    """
    with datatransfer.open_repository(app.config) as repo:
        ds = Datasets(repo)
        rows = []
        for name in ds.names():
            head = ds.head(name)
            if head is None:  # deleted while we listed
                continue
            snap = repo.get_snapshot(head.snapshot)
            rows.append({"name": name, "snapshot": head.snapshot, "time": snap.time, "files": snap.files,
                         "bytes": snap.bytes, "message": snap.message})
    text = "\n".join(f"{r['name']:<24} {r['snapshot'][:12]}  {r['time'][:19]}  {r['files']:>8} files  "
                     f"{human_bytes(r['bytes']):>10}  {r['message']}" for r in rows) or "(no datasets)"
    app.out.emit({"datasets": rows}, text)


@dataset.command()
@click.argument("name")
@click.option("--limit", "-n", type=click.IntRange(min=1), help="Show at most this many snapshots.")
@output_option
@pass_app
def log(app: App, name: str, limit: int | None) -> None:
    """Show a dataset's snapshots, newest first.

    \b
    Example:
      nerd dataset log genomes -n 5
    """
    with datatransfer.open_repository(app.config) as repo:
        rows = [{"snapshot": sid, "parent": s.parent, "time": s.time, "host": s.host, "message": s.message,
                 "files": s.files, "bytes": s.bytes} for sid, s in Datasets(repo).log(name, limit)]
    text = "\n".join(f"{r['snapshot'][:12]}  {r['time'][:19]}  {r['host']:<12} {r['files']:>8} files  "
                     f"{human_bytes(r['bytes']):>10}  {r['message']}" for r in rows)
    app.out.emit({"dataset": name, "snapshots": rows}, text)


@dataset.command()
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@output_option
@pass_app
def delete(app: App, name: str, yes: bool) -> None:
    """Delete a dataset's name. Its snapshots stay in the store, downloadable by full id.

    \b
    Example:
      nerd dataset delete scratch --yes
    """
    with datatransfer.open_repository(app.config) as repo:
        ds = Datasets(repo)
        if ds.head(name) is None:
            raise NotFound(f"no dataset named {name!r} — see `nerd dataset list`")
        if not yes and sys.stdin.isatty():
            click.confirm(f"Delete dataset {name}?", abort=True, err=True)
        last = ds.delete(name)
    app.out.emit({"dataset": name, "deleted": True, "snapshot": last},
                 f"deleted dataset {name} (it was at snapshot {last}; its objects stay in the store, so "
                 f"`nerd dataset download {name}@{last} DIR` still restores it)")
