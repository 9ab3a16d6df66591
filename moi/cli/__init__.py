"""The ``moi`` command line."""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar
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
    """Turns moi's own errors into one clear line and a non-zero exit.

    With ``--server`` (``$MOI_SERVER``) commands come from :mod:`moi.cli.remote`.
    """

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if not ctx.params.get("server"):
            return super().get_command(ctx, name)
        from moi.cli.remote import REMOTE

        if name not in REMOTE and name in self.commands:
            raise click.UsageError(f"`moi {name}` works on this machine only, not with --server")
        return REMOTE.get(name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        from moi.cli.remote import REMOTE

        return sorted(REMOTE) if ctx.params.get("server") else super().list_commands(ctx)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MoiError as exc:
            raise click.ClickException(printable(exc)) from None
        except redis.ConnectionError as exc:
            raise click.ClickException(printable(f"cannot reach Redis: {exc}")) from None
        except redis.ResponseError as exc:
            if not str(exc).startswith(("MISCONF", "READONLY")):
                raise
            raise click.ClickException(
                printable(f"Redis is up but cannot write (disk full or read-only?): {exc}")
            ) from None


@click.group(cls=_MoiGroup)
@click.version_option(package_name="moi")
@click.option(
    "--server",
    envvar="MOI_SERVER",
    default=None,
    help="Talk to this moi serve (http(s)://host:port) [$MOI_SERVER]; the API key comes "
    "from $MOI_KEY or --key-file.",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Read the API key for --server from this file (yours, chmod 600).",
)
def main(server: str | None, key_file: str | None) -> None:
    """moi: run jobs on an ipyparallel cluster and watch them live."""


#: Characters a terminal may act on: C0 controls (ESC among them), DEL, C1 controls.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
#: The same but newline and tab, which multi-line text such as a traceback needs.
_CONTROL_IN_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(value: object, multiline: bool = False) -> str:
    """``str(value)`` with every control character shown as text (ESC as ``\\x1b``).

    Job names, statuses, results and user names come from job code and other
    users: printed raw, their escape sequences would drive the terminal
    (retitle it, clear it, rewrite earlier lines).  Every printer of the CLI
    passes data through this.

    Parameters
    ----------
    value : object
        What to print.
    multiline : bool
        Keep newlines and tabs (a traceback's layout); otherwise they are
        escaped too, so one value stays on one line.

    Returns
    -------
    str
    """
    pattern = _CONTROL_IN_TEXT if multiline else _CONTROL
    return pattern.sub(lambda match: f"\\x{ord(match.group()):02x}", str(value))


def format_details(info: dict[str, Any]) -> str:
    """An info object as ``moi job`` prints it (the original moi's layout)."""
    lines = [f"********** {printable(info['id'])} **********"]
    for key in sorted(k for k in info if k != "result"):
        sep = "\t\t" if len(key) < 8 else "\t"
        lines.append(f"{printable(key)}{sep}: {printable(info[key])}")
    result = info.get("result")
    if info.get("job_type") and isinstance(result, dict):  # a typed job's environ: as JSON
        text = json.dumps(result)
    else:
        text = job.result_text(info)
    lines.append(f"result\t\t: {printable(text, multiline=True)}")
    return "\n".join(lines)


#: The fields of ``moi userjobs --summary``, in its order (the original's three first).
SUMMARY_FIELDS = ("date_created", "id", "status", "name", "call")


def format_summary(info: dict[str, Any]) -> str:
    """One line per job, as ``moi userjobs --summary`` prints it."""
    date, node_id, status, name, call = (printable(info.get(k) or "") for k in SUMMARY_FIELDS)
    return f"date: {date}\tid: {node_id}\tstatus: {status}\tname: {name}\tcall: {call}"


def _job_id(value: str) -> str:
    if value == job.NOUSER_GROUP:  # submit_nouser's group (the original moi's id)
        return value
    try:
        return str(UUID(value))
    except ValueError:
        raise MoiError(f"malformed job id {value!r}: expected a UUID") from None


F = TypeVar("F", bound=Callable[..., Any])


def json_option(func: F) -> F:
    """The ``--json`` flag of every command that prints jobs."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout."
    )(func)


def echo_json(value: Any) -> None:
    """Print ``value`` as one JSON document on stdout (non-ASCII escaped: safe in a terminal)."""
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def id_argument(what: str) -> Callable[[F], F]:
    """A job id given as ``ID`` or ``--job-id ID`` (the original's spelling)."""

    def decorate(func: F) -> F:
        func = click.argument("job_id_arg", metavar="ID", required=False)(func)
        return click.option("--job-id", default=None, help=f"{what} (or give it as ID).")(func)

    return decorate


def _given_id(job_id_arg: str | None, job_id: str | None) -> str:
    """The one job id given as an argument or with ``--job-id``, checked."""
    if job_id_arg is not None and job_id is not None and job_id_arg != job_id:
        raise click.UsageError("give the job id once: as ID or with --job-id")
    value = job_id_arg if job_id_arg is not None else job_id
    if value is None:
        raise click.UsageError("give the job id: as ID or with --job-id")
    return _job_id(value)


class _StatusPrinter:
    """Prints each status change on stderr, with the time it happened.

    A job can move on between two looks: states it passed through unseen are
    shown from its dates (``Queued`` at ``date_created``, ``Running`` at
    ``date_start``).
    """

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.job_id: str | None = None

    def __call__(self, info: dict[str, Any]) -> None:
        if self.job_id is not None and info["id"] != self.job_id:  # the next job of a chain
            self.shown = []
            click.echo(
                f"next job of the chain: {printable(info['id'])}  {printable(info['name'])}",
                err=True,
            )
        self.job_id = info["id"]
        status = info["status"]
        if status != Status.QUEUED:
            if not self.shown:
                self._echo(info["date_created"], Status.QUEUED.value)
            if status != Status.RUNNING and Status.RUNNING not in self.shown and info["date_start"]:
                self._echo(info["date_start"], Status.RUNNING.value)
        self._echo(info["date_end"] or info["date_start"] or info["date_created"], status)

    def _echo(self, when: str, status: str) -> None:
        self.shown.append(status)
        click.echo(f"{printable(when)}  status: {printable(status)}", err=True)


@main.command()
@click.option("--user", default="no-user", show_default=True, help="User whose tree gets the job.")
@click.option("--cmd", default=None, help="Python function body (use `return`) or shell command.")
@click.option(
    "--type",
    "job_type",
    default=None,
    help="Run a job type (see `moi types`) instead of --cmd, with --environ as its input.",
)
@click.option("--environ", default=None, help="The typed job's environ: a JSON object [{}].")
@click.option(
    "--environ-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Read the typed job's environ (a JSON object) from this file.",
)
@click.option(
    "--name",
    default=None,
    help="Job name [default: <user>-cmd-submit, or <user>-TYPE-submit with --type].",
)
@click.option("--context", default=None, help="Context (cluster) to run on [default: the default].")
@click.option(
    "--block/--no-block",
    default=False,
    show_default=True,
    help="Wait for the job (a chain's last job), showing status changes; print its details.",
)
@click.option(
    "--cmd-type",
    type=click.Choice(["python", "system"]),
    default="python",
    show_default=True,
    help="Run --cmd as Python or as a shell command.",
)
@click.option(
    "--many",
    "many",
    default=None,
    metavar="FILE",
    help="One job per line of FILE (- for stdin): Python gets the line as x; a shell "
    "command gets it as $MOI_INPUT and in place of {}. --block shows progress.",
)
@json_option
def submit(
    user: str,
    cmd: str | None,
    job_type: str | None,
    environ: str | None,
    environ_file: str | None,
    name: str | None,
    context: str | None,
    block: bool,
    cmd_type: str,
    many: str | None,
    as_json: bool,
) -> None:
    """Submit a Python snippet, a shell command or a typed job as a job.

    With --json: ``{"id": ...}`` without --block, the final info object with it
    (the status changes still go to stderr).
    """
    if many is not None and (job_type is not None or cmd is None):
        raise click.UsageError("--many goes with --cmd")
    if job_type is not None:
        if cmd is not None:
            raise click.UsageError("give --cmd or --type, not both")
        typed_environ = _typed_environ(job_type, environ, environ_file)
    elif cmd is None:
        here = click.get_current_context()
        cmd_option = next(p for p in here.command.params if p.name == "cmd")
        raise click.MissingParameter(ctx=here, param=cmd_option, message="(or give --type)")
    elif environ is not None or environ_file is not None:
        raise click.UsageError("--environ and --environ-file go with --type")
    elif cmd_type == "python":
        job.check_python(cmd)
    if many is not None:
        from moi.cli import many as bulk

        inputs = bulk.read_inputs(many)  # before anything is written
    ctx = resolve(context)
    ctx.bv  # noqa: B018 -- reach the cluster before writing anything
    parent = get_id_from_user(user)
    if many is not None:
        assert cmd is not None
        bulk.submit(ctx, parent, name or f"{user}-cmd-submit", cmd, cmd_type, inputs, block)
        return
    if job_type is not None:
        job_name = name or f"{user}-{job_type}-submit"
        job_id, _, ar = job.submit_type(ctx, parent, job_name, job_type, typed_environ)
    else:
        func = job.python_call if cmd_type == "python" else job.system_call
        job_id, _, ar = job.submit(ctx, parent, name or f"{user}-cmd-submit", None, func, cmd)
    click.echo(f"Submitted job id: {job_id}", err=as_json)
    if not block:
        job.wait_until_received(ar, ctx.client)  # the job must leave before this process exits
        if as_json:
            echo_json({"id": job_id})
        return
    _wait_and_show(job_id, as_json)


def _wait_and_show(job_id: str, as_json: bool) -> None:
    """The ``--block`` view: status changes on stderr, then the details; exit 0 on success."""
    try:
        info = job.wait(job_id, on_change=_StatusPrinter(), chain=True)
    except KeyboardInterrupt:
        raise click.ClickException(
            f"stopped waiting; job {job_id} goes on (`moi cancel {job_id}` stops it)"
        ) from None
    if as_json:
        echo_json(info)
    else:
        click.echo(format_details(info))
    sys.exit(0 if info["status"] == Status.SUCCESS else 1)


def _typed_environ(job_type: str, text: str | None, path: str | None) -> dict[str, Any]:
    """The environ of ``moi submit --type``, checked: refused before anything is written."""
    from moi import types

    if text is not None and path is not None:
        raise click.UsageError("give --environ or --environ-file, not both")
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise MoiError(f"cannot read --environ-file {path}: {exc}") from None
        environ = types.parse(text, f"--environ-file {path}")
    else:
        environ = types.parse(text, "--environ") if text is not None else {}
    return types.check(environ, job_type)


@main.command("job")
@id_argument("Id of the job (or group) to show")
@json_option
def job_(job_id_arg: str | None, job_id: str | None, as_json: bool) -> None:
    """Show the details of a job (or group): moi job ID."""
    info = runtime.store().require(_given_id(job_id_arg, job_id))
    if as_json:
        echo_json(info)
    else:
        click.echo(format_details(info))


@main.command("wait")
@id_argument("Id of the job to wait for")
@json_option
def wait_(job_id_arg: str | None, job_id: str | None, as_json: bool) -> None:
    """Wait for a job submitted earlier, as submit --block does: moi wait ID.

    Shows its status changes (on stderr) and follows its chain; prints the
    last job's details; exits 0 when it succeeded, 1 otherwise.
    """
    _wait_and_show(_given_id(job_id_arg, job_id), as_json)


@main.command("chain")
@id_argument("Id of any job of the chain")
@json_option
def chain_(job_id_arg: str | None, job_id: str | None, as_json: bool) -> None:
    """Show the chain a job belongs to: one line per job (id, name, status, duration)."""
    from moi import chain

    infos = chain.jobs(_given_id(job_id_arg, job_id))
    if as_json:
        echo_json([{**info, "duration": chain.duration(info)} for info in infos])
        return
    for info in infos:
        fields = (info["id"], info.get("name"), info.get("status"), chain.duration(info))
        click.echo("\t".join(printable(value) for value in fields))


@main.command()
@click.option("--key", required=True, help="User name or the user's group id.")
@click.option("--summary", is_flag=True, help="One line per job (date, id, status, name, call).")
@json_option
def userjobs(key: str, summary: bool, as_json: bool) -> None:
    """Show every job of a user, oldest first."""
    nodes = runtime.store().tree(find_user_group(key))
    jobs = sorted((n for n in nodes if n.get("type") == "job"), key=lambda n: n["date_created"])
    if as_json:
        echo_json([{k: i.get(k) for k in SUMMARY_FIELDS} if summary else i for i in jobs])
        return
    fmt = format_summary if summary else format_details
    click.echo(("\n" if summary else "\n\n").join(fmt(info) for info in jobs))


@main.command()
@json_option
def users(as_json: bool) -> None:
    """List the users and their group ids."""
    found = dict(sorted(all_users().items()))
    if as_json:
        echo_json(found)
        return
    for name, group_id in found.items():
        click.echo(f"{printable(name)}\t{printable(group_id)}")


@main.command()
@id_argument("Id of the job to cancel")
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait until the job has ended."
)
@json_option
def cancel(job_id_arg: str | None, job_id: str | None, wait: bool, as_json: bool) -> None:
    """Cancel a job: a queued one never runs, a running one is interrupted.

    With --json: ``{"id", "outcome", "status"}`` (``status`` only with --wait).
    """
    job_id = _given_id(job_id_arg, job_id)
    outcome = job.cancel(job_id)
    if outcome == "requested":
        click.echo(f"Asked the engine to stop job {job_id}", err=True)
    status = None
    if wait:
        try:
            status = job.wait(job_id, timeout=60)["status"]
        except TimeoutError as exc:
            raise MoiError(str(exc)) from None
    if as_json:
        echo_json({"id": job_id, "outcome": outcome, "status": status})
    elif wait:
        click.echo(f"Job {job_id}: {printable(status)}")
    else:
        click.echo(f"Job {job_id}: cancel {outcome}")


@main.command("types")
@json_option
def types_(as_json: bool) -> None:
    """List the job types and filters, with where each comes from."""
    from moi import types

    if as_json:
        echo_json(
            {
                title: [
                    {
                        "name": p.name,
                        "source": p.source,
                        "description": p.description,
                        "error": p.error,
                    }
                    for p in plugins.values()
                ]
                for title, plugins in (("types", types.job_types()), ("filters", types.filters()))
            }
        )
        return
    for title, plugins in (("types", types.job_types()), ("filters", types.filters())):
        click.echo(f"{title}:")
        if not plugins:
            click.echo("  (none)")
        width = max((len(name) for name in plugins), default=0)
        source_width = max((len(plugin.source) for plugin in plugins.values()), default=0)
        for plugin in plugins.values():
            text = plugin.description if plugin.error is None else f"BROKEN: {plugin.error}"
            line = f"  {plugin.name:<{width}}  {plugin.source:<{source_width}}  {text}".rstrip()
            click.echo(printable(line))


#: The lines ``moi batch`` prints the final environ between (sio-batch's contract).
BEGIN_ENVIRON, END_ENVIRON = "--- BEGIN ENVIRON ---", "--- END ENVIRON ---"


@main.command()
def batch() -> None:
    """Run one typed job here, from the JSON in $environ; print the final environ.

    The environ names its type in ``job_type``.  It is printed between
    ``--- BEGIN ENVIRON ---`` and ``--- END ENVIRON ---``; the exit status is
    0 when its ``result`` is ``SUCCESS``, 1 when ``FAILURE``.  Nothing is
    written to Redis.
    """
    import os

    from moi import types

    text = os.environ.get("environ")
    if text is None:
        raise MoiError("the environment variable environ is not set: give the job as JSON")
    environ = types.check(types.parse(text, "$environ"))
    final = types.execute(environ)
    click.echo(BEGIN_ENVIRON)
    click.echo(json.dumps(final))
    click.echo(END_ENVIRON)
    sys.exit(0 if final.get("result") == "SUCCESS" else 1)


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
@click.option("--force", is_flag=True, help="Do not ask when jobs are running or queued.")
def down(force: bool) -> None:
    """Stop the embedded Redis, cluster and watchdog.

    Jobs still running or queued on the embedded cluster end ``Failed``
    ("stopped by moi down"); you are asked first unless ``--force``.
    """
    cfg = runtime.settings()
    jobs = _jobs_down_would_stop(cfg)
    if jobs and not force:
        click.confirm(
            f"{len(jobs)} job(s) still running or queued on the embedded cluster will be "
            "stopped; go on?",
            abort=True,
            err=True,
        )
    if jobs:
        job.end_jobs([info["id"] for info in jobs], job.STOPPED_BY_DOWN)
        click.echo(f"ended {len(jobs)} job(s): {job.STOPPED_BY_DOWN}", err=True)
    stopped = embedded.down(cfg.state_dir)
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def _jobs_down_would_stop(cfg: Any) -> list[dict[str, Any]]:
    """Unfinished jobs of the embedded cluster, when it and Redis are up (never starts them)."""
    if not cfg.embedded_cluster or not embedded.cluster_state(cfg.state_dir):
        return []
    if not cfg.redis_url and not embedded.redis_running(cfg.state_dir):
        return []
    return job.unfinished_jobs(cfg.default_context)


@main.command()
@json_option
def status(as_json: bool) -> None:
    """Show what runs, where, and since when."""
    if as_json:
        columns = ("part", "state", "where", "since")
        echo_json([dict(zip(columns, row, strict=True)) for row in _status_rows()])
        return
    _status_table()


def _status_rows() -> list[tuple[str, str, str, str]]:
    """``(part, state, where, since)`` rows of ``moi status``."""
    cfg = runtime.settings()
    rows = []
    if cfg.redis_url:
        rows.append(("redis", "configured", cfg.redis_url.split("@")[-1], "-"))
    own = embedded.status(cfg.state_dir)
    rows += [row for row in own if row[0] != "redis" or not cfg.redis_url]
    rows.append(("contexts", ",".join(cfg.contexts), f"default: {cfg.default_context}", "-"))
    return rows


def _status_table() -> None:
    for row in _status_rows():
        click.echo("\t".join(row))


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
    type=click.IntRange(0, 65535),
    help="Port to listen on; 0 picks a free one (the printed URL shows which).",
)
@click.option("--user", default="no-user", show_default=True, help="Whose jobs to show.")
@click.option(
    "--token",
    envvar="MOI_TOKEN",
    default=None,
    help="Login token, 16+ characters [default: $MOI_TOKEN, else a random one]. "
    "On the command line other users see it in ps: prefer $MOI_TOKEN or --token-file.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Read the login token from this file (yours, chmod 600); wins over $MOI_TOKEN.",
)
@click.option(
    "--session-hours",
    type=click.FloatRange(0, min_open=True),
    default=12.0,
    show_default=True,
    help="How long a browser login lasts.",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    help="Another Host name to accept besides localhost/127.0.0.1/[::1] "
    "(e.g. the name a reverse proxy forwards); repeatable.",
)
@click.option(
    "--behind-proxy",
    is_flag=True,
    help="Trust X-Forwarded-For/-Proto from a reverse proxy (TLS) in front; only with one.",
)
@click.option("--read-only", is_flag=True, help="Hide and refuse submit, cancel and remove.")
@click.option(
    "--metrics-public", is_flag=True, help="Serve /metrics without a login (Prometheus)."
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    user: str,
    token: str | None,
    token_file: str | None,
    session_hours: float,
    allow_hosts: tuple[str, ...],
    behind_proxy: bool,
    read_only: bool,
    metrics_public: bool,
) -> None:
    """Serve the live dashboard of a user's jobs.

    With a token (--token, --token-file, $MOI_TOKEN): user --user behind it, as
    always.  Without one, once API keys exist (moi keys create), every key
    holder logs in with their key and sees their own tree.
    """
    import asyncio
    import logging
    from pathlib import Path

    from moi import web, webauth

    on_command_line = ctx.get_parameter_source("token") is click.core.ParameterSource.COMMANDLINE
    if token_file is not None:
        if on_command_line:
            raise click.UsageError("give the token with --token or --token-file, not both")
        token = webauth.read_token_file(Path(token_file))
    elif on_command_line:
        click.echo(webauth.TOKEN_IN_PS_WARNING, err=True)
    if token is not None:
        webauth.check_token(token)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    runtime.redis_url()  # start or reach Redis before listening
    serving = web.serve(
        host, port, user, token, read_only, session_hours, allow_hosts, behind_proxy,
        metrics_public,
    )
    try:
        asyncio.run(serving)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise MoiError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


# Command groups that grew past a few commands live in modules of their own,
# registered on ``main`` when imported here (each module imports ``main``).
from moi.cli import keys as _keys  # noqa: E402,F401  (moi keys, moi templates)
from moi.cli import logs as _logs  # noqa: E402,F401  (moi logs)
from moi.cli import remote as _remote  # noqa: E402,F401  (--server mode, moi nodes)
from moi.cli import watch as _watch  # noqa: E402,F401  (moi watch)

if __name__ == "__main__":
    main()
