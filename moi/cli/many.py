"""``moi submit --many FILE``: one job per input line, and a progress display while waiting."""

from __future__ import annotations

import functools
import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from moi import job
from moi.cli import printable
from moi.context import Context
from moi.errors import MoiError
from moi.status import Status


def read_inputs(path: str) -> list[str]:
    """The input lines of ``path`` (``-``: standard input), blank lines skipped."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise MoiError(f"cannot read --many {path}: {exc}") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise MoiError(f"--many {path} holds no input lines: nothing to submit")
    return lines


def submit(
    ctx: Context, parent: str, name: str, cmd: str, cmd_type: str, inputs: list[str], block: bool
) -> None:
    """Submit one job per input line; with ``block``, wait showing progress."""
    each = job.python_each if cmd_type == "python" else job.system_each
    ids, jobs = job.submit_many(ctx, parent, name, functools.partial(each, cmd=cmd), inputs)
    for job_id in ids:
        click.echo(f"Submitted job id: {job_id}")
    if not block:
        for ar in jobs.async_results:  # the jobs must leave before this process exits
            job.wait_until_received(ar, ctx.client)
        return
    try:
        infos = _wait_showing_progress(jobs)
    except KeyboardInterrupt:
        raise click.ClickException(
            f"stopped waiting; the {len(ids)} jobs go on (`moi cancel --job-id ID` stops one)"
        ) from None
    for info in infos:
        result = job.result_text(info).strip().splitlines() or [""]
        line = result[-1] if info["status"] != Status.SUCCESS else " ".join(result)
        click.echo(f"{info['id']}\t{printable(info['status'])}\t{printable(line)}")
    failed = sum(info["status"] != Status.SUCCESS for info in infos)
    click.echo(f"{len(infos) - failed} of {len(infos)} jobs succeeded", err=True)
    sys.exit(1 if failed else 0)


def describe(counts: dict[str, int]) -> str:
    """Counts by status as one line of rich markup: ``Queued 3 · Running 2 · Success 5 · ...``.

    Statuses are text from job code: control characters are shown escaped and
    markup (``[link=...]``) is escaped, so neither reaches the terminal.
    """
    line = " · ".join(f"{printable(status)} {count}" for status, count in counts.items())
    return escape(line)


def _wait_showing_progress(jobs: job.ManyJobs) -> list[dict[str, Any]]:
    """Wait for every job, with a progress bar and the counts by status on stderr."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("waiting", total=len(jobs))

        def show(counts: dict[str, int]) -> None:
            ended = sum(
                counts.get(s.value, 0) for s in (Status.SUCCESS, Status.FAILED, Status.CANCELLED)
            )
            bar.update(task, completed=ended, description=describe(counts))

        return jobs.wait(progress=show)
