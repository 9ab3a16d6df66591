"""``moi logs``: a job's output, kept or followed live (:mod:`moi.logs`)."""

from __future__ import annotations

import sys

import click

from moi import keys, logs, runtime
from moi.cli import _job_id, main, printable
from moi.errors import MoiError
from moi.status import Status, is_terminal

#: Exit status of ``moi logs -f`` by how the job ended (any other final status: 3).
EXIT_CODES = {Status.SUCCESS.value: 0, Status.FAILED.value: 1, Status.CANCELLED.value: 2}


@main.command("logs")
@click.argument("job_id_arg", metavar="[JOB_ID]", required=False)
@click.option("--job-id", default=None, help="Id of the job (or give it as the argument).")
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Follow the output live until the job ends; exit "
    "with 0 (Success), 1 (Failed), 2 (Cancelled).",
)
def logs_(job_id_arg: str | None, job_id: str | None, follow: bool) -> None:
    """Print a job's output (its last 10,000 lines or 1 MiB); -f follows it live."""
    if (job_id_arg is None) == (job_id is None):
        raise click.UsageError("give the job id once: as the argument or with --job-id")
    wanted = _job_id(job_id_arg or job_id or "")
    info = runtime.store().require(wanted)
    if info.get("type") != "job":
        raise MoiError(f"{wanted} is a group, not a job: only jobs have output")
    if not follow:
        _print(logs.read_lines_sync(runtime.redis_client(), wanted)["lines"])
        return
    try:
        status = _follow(wanted)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(EXIT_CODES.get(status, 3))


def _follow(job_id: str) -> str:
    """Print the job's lines as they come until it ends; return its final status."""
    r, store = runtime.redis_client(), runtime.store()
    with r.pubsub(ignore_subscribe_messages=False) as sub:
        channels = {keys.log_channel(job_id), keys.pubsub(job_id)}
        sub.subscribe(*channels)
        while channels:  # wait for the confirmations: nothing published later is missed
            message = sub.get_message(timeout=5)
            if message is None:
                raise MoiError("Redis did not confirm the subscription; try again")
            if message["type"] == "subscribe":
                channels.discard(message["channel"].decode())
        start = 0
        while True:
            status = store.require(job_id).get("status")  # before the lines: the last ones
            got = logs.read_lines_sync(r, job_id, start)  # land before the final status
            _print(got["lines"])
            start = got["next"]
            if is_terminal(status):
                return str(status)
            sub.get_message(timeout=1.0)
            while sub.get_message(timeout=0) is not None:  # one read for all that came
                pass


def _print(lines: list[str]) -> None:
    if lines:
        sys.stdout.write("".join(printable(line, multiline=True) + "\n" for line in lines))
        sys.stdout.flush()
