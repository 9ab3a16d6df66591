"""``moi keys create/list/revoke`` (API keys of ``moi serve``) and ``moi templates``."""

from __future__ import annotations

import click

from moi import auth
from moi.cli import main, printable


@main.group("keys")
def keys_() -> None:
    """Make, list and revoke the API keys people log in to moi serve with."""


@keys_.command("create")
@click.option("--user", required=True, help="Whose tree the key acts on.")
@click.option("--admin", is_flag=True, help="See and act on every user's tree.")
@click.option("--read-only", is_flag=True, help="Only read: every write is refused.")
@click.option("--note", default="", help="A note shown by moi keys list (who, what for).")
def create(user: str, admin: bool, read_only: bool, note: str) -> None:
    """Make a key for USER and print it once (the last line: the key alone)."""
    first = not auth.any_keys()
    key, info = auth.create(user, admin=admin, read_only=read_only, note=note)
    kind = "admin key" if admin else "key"
    if first:  # a server decides at start whether people log in with keys
        click.echo(
            "the first API key: a token-less moi serve started before it still logs in "
            "with its printed token; restart it to log people in with their keys",
            err=True,
        )
    click.echo(
        printable(
            f"{kind} {info.prefix} for user {info.user!r}"
            + (" (read-only)" if read_only else "")
            + ": shown only now, moi keeps its hash; revoke it with moi keys revoke "
            + info.prefix
        ),
        err=False,
    )
    click.echo(key)


@keys_.command("list")
def list_() -> None:
    """List the keys: prefix, user, rights, created, last used, note (never the key)."""
    found = auth.list_keys()
    if not found:
        click.echo("no API keys (make one with moi keys create --user NAME)")
        return
    rows = [("prefix", "user", "rights", "created", "last used", "note")]
    for info in found:
        rights = "admin" if info.admin else "user"
        rights += ",read-only" if info.read_only else ""
        created, used = info.created[:19], (info.last_used or "never")[:19]
        rows.append((info.prefix, info.user, rights, created, used, info.note))
    widths = [max(len(printable(row[n])) for row in rows) for n in range(5)]
    for row in rows:
        cells = [printable(cell).ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo(printable("  ".join([*cells, printable(row[5])]).rstrip()))


@keys_.command("revoke")
@click.argument("prefix")
def revoke(prefix: str) -> None:
    """Revoke the key whose prefix starts with PREFIX; its sessions end at their next request."""
    info = auth.revoke(prefix)
    click.echo(printable(f"revoked key {info.prefix} of user {info.user!r}"))


@main.command("templates")
def templates_() -> None:
    """List the job templates (from MOI_TEMPLATES or templates.toml, and entry points)."""
    from moi import manager

    found = manager.templates()
    if not found:
        click.echo(f"no templates (write some in {manager.templates_file()})")
        return
    width = max(len(name) for name in found)
    type_width = max(len(t.job_type) for t in found.values())
    for template in found.values():
        line = (
            f"{template.name:<{width}}  {template.job_type:<{type_width}}  {template.description}"
        )
        click.echo(printable(line.rstrip()))
        if template.params:
            import json

            click.echo(printable(f"  params {json.dumps(template.params, sort_keys=True)}"))
        click.echo(printable(f"  from {template.source}"))
