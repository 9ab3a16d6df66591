"""The CLI against a remote ``moi serve`` (``--server URL`` or ``$MOI_SERVER``), and ``moi nodes``.

With a server, ``moi submit``, ``moi job``, ``moi cancel``, ``moi retry``,
``moi types``, ``moi templates`` and ``moi nodes`` go through
:class:`moi.client.Client` as the user of an API key, read from
``$MOI_KEY`` or a private file (``--key-file``), never from the command
line (other users see command lines in ``ps``).  Without one the CLI works
on this machine as always.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from moi.cli import _StatusPrinter, format_details, main, printable
from moi.errors import MoiError
from moi.status import Status

#: The commands that replace the local ones when a server is given.
REMOTE: dict[str, click.Command] = {}


@click.group()
def _remote() -> None:
    """Commands against a remote server (looked up through :data:`REMOTE`)."""


def client_of(ctx: click.Context) -> Any:
    """The :class:`moi.client.Client` of ``--server`` / ``$MOI_SERVER`` with the user's key."""
    from moi import connection
    from moi.client import Client

    top = ctx.find_root()
    server, key_file = top.params.get("server"), top.params.get("key_file")
    if key_file is not None:
        try:
            key = connection.read_private_text(Path(key_file)).strip()
        except FileNotFoundError:
            raise MoiError(f"--key-file {key_file}: No such file") from None
    else:
        key = os.environ.get("MOI_KEY", "").strip()
    if not key:
        raise MoiError(
            "no API key: set MOI_KEY or give --key-file (a file only you can read); "
            "`moi keys create` makes one"
        )
    return Client(str(server), key)


def remote(name: str) -> Any:
    """Register a command of :data:`REMOTE` under ``name``."""

    def register(command: click.Command) -> click.Command:
        REMOTE[name] = command
        return command

    return register


@remote("submit")
@_remote.command("submit")
@click.option("--cmd", default=None, help="Python function body (use `return`) or shell command.")
@click.option(
    "--cmd-type",
    type=click.Choice(["python", "system"]),
    default="python",
    show_default=True,
    help="Run --cmd as Python or as a shell command.",
)
@click.option("--type", "job_type", default=None, help="Run this job type with --environ.")
@click.option("--environ", default=None, help="The typed job's environ: a JSON object [{}].")
@click.option("--template", default=None, help="Run this template with --params.")
@click.option("--params", default=None, help="The template job's parameters: a JSON object.")
@click.option("--name", default=None, help="Job name.")
@click.option("--context", default=None, help="Context (cluster) to run on.")
@click.option(
    "--block/--no-block",
    default=False,
    show_default=True,
    help="Wait for the job (a chain's last job); print its details.",
)
@click.pass_context
def submit(
    ctx: click.Context,
    cmd: str | None,
    cmd_type: str,
    job_type: str | None,
    environ: str | None,
    template: str | None,
    params: str | None,
    name: str | None,
    context: str | None,
    block: bool,
) -> None:
    """Submit a command, a typed job or a template's job to the server."""
    if sum(x is not None for x in (cmd, job_type, template)) != 1:
        raise click.UsageError("give one of --cmd, --type (with --environ), --template")
    client = client_of(ctx)
    info = client.submit(
        type=job_type,
        environ=_json_object(environ, "--environ"),
        template=template,
        params=_json_object(params, "--params"),
        cmd=cmd,
        cmd_type=cmd_type,
        name=name,
        context=context,
    )
    click.echo(f"Submitted job id: {printable(info['id'])}")
    if block:
        _wait_and_show(client, info)


def _json_object(text: str | None, what: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise MoiError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MoiError(f"{what} must be a JSON object")
    return value


def _wait_and_show(client: Any, info: dict[str, Any]) -> None:
    """Wait for the job and the rest of its chain, showing its statuses; exit 0 on Success."""
    show = _StatusPrinter()
    show(info)
    try:
        while True:
            info = client.wait(info["id"])
            show(info)
            following = info.get("chained_to")
            if not following or not isinstance(following, list):
                break
            info = client.get(str(following[-1]))
            show(info)
    except KeyboardInterrupt:
        raise click.ClickException(
            f"stopped waiting; job {info['id']} goes on (`moi cancel --job-id ...` stops it)"
        ) from None
    click.echo(format_details(info))
    sys.exit(0 if info["status"] == Status.SUCCESS else 1)


@remote("job")
@_remote.command("job")
@click.option("--job-id", required=True, help="Id of the job to show.")
@click.pass_context
def job_(ctx: click.Context, job_id: str) -> None:
    """Show the details of a job."""
    click.echo(format_details(client_of(ctx).get(job_id)))


@remote("cancel")
@_remote.command("cancel")
@click.option("--job-id", required=True, help="Id of the job to cancel.")
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait until the job has ended."
)
@click.pass_context
def cancel(ctx: click.Context, job_id: str, wait: bool) -> None:
    """Cancel a job on the server."""
    client = client_of(ctx)
    outcome = client.cancel(job_id)["outcome"]
    if wait:
        try:
            info = client.wait(job_id, timeout=60)
        except TimeoutError as exc:
            raise MoiError(str(exc)) from None
        click.echo(f"Job {printable(job_id)}: {printable(info['status'])}")
    else:
        click.echo(f"Job {printable(job_id)}: cancel {printable(outcome)}")


@remote("retry")
@_remote.command("retry")
@click.option("--job-id", required=True, help="Id of the job to run again.")
@click.option("--block/--no-block", default=False, show_default=True, help="Wait for it.")
@click.pass_context
def retry(ctx: click.Context, job_id: str, block: bool) -> None:
    """Run a job again with the same input (a new job, ``retry_of`` the old one)."""
    client = client_of(ctx)
    info = client.retry(job_id)
    click.echo(f"Submitted job id: {printable(info['id'])}")
    if block:
        _wait_and_show(client, info)


@remote("types")
@_remote.command("types")
@click.pass_context
def types_(ctx: click.Context) -> None:
    """List the server's job types."""
    for plugin in client_of(ctx).types():
        text = plugin["description"] if plugin["error"] is None else f"BROKEN: {plugin['error']}"
        click.echo("\t".join(printable(f) for f in (plugin["name"], plugin["source"], text)))


@remote("templates")
@_remote.command("templates")
@click.pass_context
def templates(ctx: click.Context) -> None:
    """List the server's job templates."""
    for found in client_of(ctx).templates():
        fields = (
            found["name"],
            found["job_type"],
            json.dumps(found["params"]),
            found["description"],
        )
        click.echo("\t".join(printable(f) for f in fields))


@remote("nodes")
@main.command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds each local context may take to answer (connecting included).",
)
@click.pass_context
def nodes(ctx: click.Context, timeout: float) -> None:
    """List each context's controller and engines: host, pid, running job, queue, jobs done."""
    if ctx.find_root().params.get("server"):
        found = client_of(ctx).nodes()
    else:
        from moi import nodes as local

        found = local.listing(timeout)
    for context in found:
        state = "reachable" if context["reachable"] else context.get("error", "unreachable")
        fields = (f"context {context['context']}", f"controller {context['controller']}", state)
        click.echo("\t".join(printable(f) for f in fields))
        if context["engines"]:
            click.echo("  engine\thost\tpid\tqueue\tdone\trunning")
        for engine in context["engines"]:
            job = engine["running"]
            running = f"{job['id']} {job['name']}" if job else "-"
            row = (engine["id"], engine["host"], engine["pid"], engine["queue"], engine["done"])
            click.echo("  " + "\t".join(printable(f) for f in (*row, running)))
