"""The ``moi`` command line."""

from __future__ import annotations

import contextlib
import sys
from typing import Any
from uuid import UUID

import click
import redis

from moi import embedded, job, runtime
from moi.context import resolve
from moi.errors import MoiError
from moi.group import find_user_group, get_id_from_user
from moi.group import users as all_users
from moi.status import Status


class _MoiGroup(click.Group):
    """Turns moi's own errors into one clear line and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MoiError as exc:
            raise click.ClickException(str(exc)) from None
        except redis.ConnectionError as exc:
            raise click.ClickException(f"cannot reach Redis: {exc}") from None


@click.group(cls=_MoiGroup)
@click.version_option(package_name="moi")
def main() -> None:
    """moi: run jobs on an ipyparallel cluster and watch them live."""


def format_details(info: dict[str, Any]) -> str:
    """An info object as ``moi job`` prints it (the original moi's layout)."""
    lines = [f"********** {info['id']} **********"]
    for key in sorted(k for k in info if k != "result"):
        sep = "\t\t" if len(key) < 8 else "\t"
        lines.append(f"{key}{sep}: {info[key]}")
    lines.append(f"result\t\t: {job.result_text(info)}")
    return "\n".join(lines)


def format_summary(info: dict[str, Any]) -> str:
    """One line per job, as ``moi userjobs --summary`` prints it."""
    return f"date: {info['date_created']}\tid: {info['id']}\tstatus: {info['status']}"


def _job_id(value: str) -> str:
    try:
        return str(UUID(value))
    except ValueError:
        raise MoiError(f"malformed job id {value!r}: expected a UUID") from None


class _StatusPrinter:
    """Prints each status change on stderr, with the time it happened.

    A job can move on between two looks: states it passed through unseen are
    shown from its dates (``Queued`` at ``date_created``, ``Running`` at
    ``date_start``).
    """

    def __init__(self) -> None:
        self.shown: list[str] = []

    def __call__(self, info: dict[str, Any]) -> None:
        status = info["status"]
        if status != Status.QUEUED:
            if not self.shown:
                self._echo(info["date_created"], Status.QUEUED.value)
            if status != Status.RUNNING and Status.RUNNING not in self.shown and info["date_start"]:
                self._echo(info["date_start"], Status.RUNNING.value)
        self._echo(info["date_end"] or info["date_start"] or info["date_created"], status)

    def _echo(self, when: str, status: str) -> None:
        self.shown.append(status)
        click.echo(f"{when}  status: {status}", err=True)


@main.command()
@click.option("--user", default="no-user", show_default=True, help="User whose tree gets the job.")
@click.option("--cmd", required=True, help="Python function body (use `return`) or shell command.")
@click.option("--name", default=None, help="Job name [default: <user>-cmd-submit].")
@click.option("--context", default=None, help="Context (cluster) to run on [default: the default].")
@click.option(
    "--block/--no-block",
    default=False,
    show_default=True,
    help="Wait for the job, showing its status changes, then print its details.",
)
@click.option(
    "--cmd-type",
    type=click.Choice(["python", "system"]),
    default="python",
    show_default=True,
    help="Run --cmd as Python or as a shell command.",
)
def submit(
    user: str, cmd: str, name: str | None, context: str | None, block: bool, cmd_type: str
) -> None:
    """Submit a Python snippet or a shell command as a job."""
    if cmd_type == "python":
        job.check_python(cmd)
    ctx = resolve(context)
    ctx.bv  # noqa: B018 -- reach the cluster before writing anything
    func = job.python_call if cmd_type == "python" else job.system_call
    job_id, _, ar = job.submit(
        ctx, get_id_from_user(user), name or f"{user}-cmd-submit", None, func, cmd
    )
    click.echo(f"Submitted job id: {job_id}")
    if not block:
        job.wait_until_received(ar, ctx.client)  # the job must leave before this process exits
        return
    try:
        info = job.wait(job_id, on_change=_StatusPrinter())
    except KeyboardInterrupt:
        raise click.ClickException(
            f"stopped waiting; job {job_id} goes on (`moi cancel --job-id {job_id}` stops it)"
        ) from None
    click.echo(format_details(info))
    sys.exit(0 if info["status"] == Status.SUCCESS else 1)


@main.command("job")
@click.option("--job-id", required=True, help="Id of the job (or group) to show.")
def job_(job_id: str) -> None:
    """Show the details of a job."""
    click.echo(format_details(runtime.store().require(_job_id(job_id))))


@main.command()
@click.option("--key", required=True, help="User name or the user's group id.")
@click.option("--summary", is_flag=True, help="One line per job instead of every field.")
def userjobs(key: str, summary: bool) -> None:
    """Show every job of a user, oldest first."""
    nodes = runtime.store().tree(find_user_group(key))
    jobs = sorted((n for n in nodes if n.get("type") == "job"), key=lambda n: n["date_created"])
    fmt = format_summary if summary else format_details
    click.echo(("\n" if summary else "\n\n").join(fmt(info) for info in jobs))


@main.command()
def users() -> None:
    """List the users and their group ids."""
    for name, group_id in sorted(all_users().items()):
        click.echo(f"{name}\t{group_id}")


@main.command()
@click.option("--job-id", required=True, help="Id of the job to cancel.")
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait until the job has ended."
)
def cancel(job_id: str, wait: bool) -> None:
    """Cancel a job: a queued one never runs, a running one is interrupted."""
    job_id = _job_id(job_id)
    outcome = job.cancel(job_id)
    if outcome == "requested":
        click.echo(f"Asked the engine to stop job {job_id}", err=True)
    if wait:
        try:
            info = job.wait(job_id, timeout=60)
        except TimeoutError as exc:
            raise MoiError(str(exc)) from None
        click.echo(f"Job {job_id}: {info['status']}")
    else:
        click.echo(f"Job {job_id}: cancel {outcome}")


@main.command()
def up() -> None:
    """Start the embedded Redis and local cluster now (otherwise on first use)."""
    cfg = runtime.settings()
    embedded_parts = not cfg.redis_url or cfg.embedded_cluster
    # one `moi up` starts what is missing while a racing one waits, then reuses it
    with embedded.state_lock(cfg.state_dir) if embedded_parts else contextlib.nullcontext():
        runtime.redis_url()
        client = resolve(None).client  # connecting starts the embedded cluster if needed
    client.wait_for_engines(embedded.engine_count() if cfg.embedded_cluster else 1, timeout=120)
    _status_table()


@main.command()
def down() -> None:
    """Stop the embedded Redis, cluster and watchdog."""
    stopped = embedded.down(runtime.settings().state_dir)
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@main.command()
def status() -> None:
    """Show what runs, where, and since when."""
    _status_table()


def _status_table() -> None:
    cfg = runtime.settings()
    if cfg.redis_url:
        click.echo(f"redis\tconfigured\t{cfg.redis_url.split('@')[-1]}\t-")
    for row in embedded.status(cfg.state_dir):
        if row[0] == "redis" and cfg.redis_url:
            continue
        click.echo("\t".join(row))
    click.echo(f"contexts\t{','.join(cfg.contexts)}\tdefault: {cfg.default_context}\t-")


@main.command()
def watchdog() -> None:
    """Fail jobs whose engine died (run one per deployment; embedded runs its own)."""
    from moi import watchdog as wd

    wd.main()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8886,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Port to listen on.",
)
@click.option("--user", default="no-user", show_default=True, help="Whose jobs to show.")
@click.option(
    "--token",
    envvar="MOI_TOKEN",
    default=None,
    help="Login token [default: $MOI_TOKEN, else a random one].",
)
@click.option("--read-only", is_flag=True, help="Hide and refuse submit, cancel and remove.")
def serve(host: str, port: int, user: str, token: str | None, read_only: bool) -> None:
    """Serve the live dashboard of a user's jobs."""
    import asyncio
    import logging

    from moi import web

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    runtime.redis_url()  # start or reach Redis before listening
    try:
        asyncio.run(web.serve(host, port, user, token, read_only))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise MoiError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


if __name__ == "__main__":
    main()
