"""The dashboard's charts in real Chromium against a real ``moi serve`` (issue 12, item 5).

The task stream (engines as lanes, a bar per job coloured by status, hover for
name and duration, live) and the jobs by status over the last hour, drawn with
the vendored uPlot under the dashboard's Content-Security-Policy; and the
``engine`` field a job's Running write now carries, which names its lane.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from support import LIVE, add, log_in, wait_for_status

from moi import runtime
from moi.group import create_info, get_id_from_user
from moi.job import submit


@pytest.fixture
def viewport() -> dict[str, int]:
    return {"width": 1200, "height": 1600}  # the charts sit under the list


@pytest.fixture(autouse=True)
def under_the_csp(watched: Any) -> Iterator[None]:
    """The chart library runs under the dashboard's Content Security Policy."""
    yield
    assert watched.refused == [], watched.refused


def local(seconds_ago: float) -> str:
    """A server date string (local time) ``seconds_ago`` seconds ago."""
    t = time.time() - seconds_ago
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1e6):06d}"


def add_job(parent: str, name: str, **fields: Any) -> str:
    info = create_info(name, "job", parent=parent)
    info.update(fields)
    runtime.store().create(info)
    return info["id"]


def chart(page: Page, expression: str) -> Any:
    return page.evaluate(f"(() => {{ const c = moi_charts.charts[0]; return {expression}; }})()")


def test_task_stream_lanes_bars_hover_and_live(page, server, user):
    root = get_id_from_user(user)
    done = add_job(
        root,
        "short one",
        status="Success",
        date_created=local(600),
        date_start=local(590),
        date_end=local(530),
        engine="engine 0 (h:1)",
    )
    failed = add_job(
        root,
        "broken one",
        status="Failed",
        date_created=local(600),
        date_start=local(520),
        date_end=local(500),
        engine="engine 1 (h:2)",
    )
    running = add_job(
        root,
        "still going",
        status="epoch 3/10",
        date_created=local(400),
        date_start=local(300),
        engine="engine 0 (h:1)",
    )
    add_job(root, "waiting", date_created=local(100))  # never started: no bar
    log_in(page, server)
    stream = page.locator(".moi-stream")
    expect(stream).to_have_attribute("data-bars", "3", timeout=LIVE)
    expect(stream).to_have_attribute("data-lanes", "2")
    expect(stream.locator("canvas")).to_have_count(1)
    assert chart(page, "c.lanes") == ["engine 0 (h:1)", "engine 1 (h:2)"]
    bars = {b["id"]: b for b in chart(page, "c.bars.map(b => ({id: b.id, y: b.y, key: b.key}))")}
    assert bars[done]["y"] == bars[running]["y"] == 0 and bars[failed]["y"] == 1
    assert bars[running]["key"] == "Running"  # its own status text draws as Running

    # the canvas holds the bars in their status colours
    colours = page.evaluate(
        """ids => ids.map(id => {
            const c = moi_charts.charts[0], p = c.barPosition(id), u = c.stream;
            const r = u.over.getBoundingClientRect(), k = devicePixelRatio;
            const x = Math.round((p.x - r.left) * k + u.bbox.left);
            const y = Math.round((p.y - r.top) * k + u.bbox.top);
            return Array.from(u.ctx.getImageData(x, y, 1, 1).data.slice(0, 3));
        })""",
        [done, failed, running],
    )
    assert colours == [[21, 128, 61], [185, 28, 28], [37, 99, 235]]

    # hover: the job's name, status and duration
    where = chart(page, f"c.barPosition({json.dumps(done)})")
    page.mouse.move(where["x"], where["y"])
    tip = page.locator(".moi-stream-tip")
    expect(tip).to_be_visible()
    expect(tip).to_have_text("short one · Success · 1 min 00 s")
    where = chart(page, f"c.barPosition({json.dumps(failed)})")
    page.mouse.move(where["x"], where["y"])
    expect(tip).to_have_text("broken one · Failed · 20 s")

    # live: a job starting on a third engine adds a bar and a lane
    fresh = add_job(root, "new one", date_created=local(5))
    runtime.store().update(
        fresh, {"status": "Running", "date_start": local(1), "engine": "engine 2 (h:3)"}
    )
    expect(stream).to_have_attribute("data-bars", "4", timeout=LIVE)
    expect(stream).to_have_attribute("data-lanes", "3")
    runtime.store().update(running, {"status": "Success", "date_end": local(0)})
    expect(page.locator(f'#moi-panel [data-id="{running}"] .moi-status')).to_have_text("Success")
    where = chart(page, f"c.barPosition({json.dumps(running)})")
    page.mouse.move(where["x"], where["y"])
    expect(tip).to_contain_text("still going · Success")


def test_stream_keeps_the_last_jobs_only(page, server, user):
    root = get_id_from_user(user)
    for n in range(12):
        add_job(
            root,
            f"job {n}",
            status="Success",
            date_created=local(100 - n),
            date_start=local(100 - n),
            date_end=local(99 - n),
            engine="engine 0",
        )
    log_in(page, server)
    stream = page.locator(".moi-stream")
    expect(stream).to_have_attribute("data-bars", "12", timeout=LIVE)
    chart(page, "(c.lastJobs = 5, c.drawStream(), 0)")  # the default keeps 1,000
    expect(stream).to_have_attribute("data-bars", "5")
    names = sorted(chart(page, "c.bars.map(b => b.name)"))
    assert names == ["job 10", "job 11", "job 7", "job 8", "job 9"]  # the latest to start


def test_counts_over_the_last_hour_follow_the_jobs(page, server, user):
    root = get_id_from_user(user)
    add_job(
        root,
        "old success",
        status="Success",
        date_created=local(3000),
        date_start=local(2990),
        date_end=local(2900),
    )
    add_job(
        root,
        "failed lately",
        status="Failed",
        date_created=local(700),
        date_start=local(650),
        date_end=local(610),
    )
    queued = add_job(root, "queued", date_created=local(200))
    log_in(page, server)
    history = page.locator(".moi-history")
    expect(history).to_have_attribute(
        "data-latest",
        json.dumps(
            {"Queued": 1, "Running": 0, "Success": 1, "Failed": 1, "Cancelled": 0, "Pending": 0},
            separators=(",", ":"),
        ),
        timeout=LIVE,
    )
    expect(history.locator("canvas")).to_have_count(1)
    # an hour of minutes: the success counts from 49 minutes ago on, the failure from 10
    series = chart(page, "c.history.data.map(s => Array.from(s))")
    assert len(series[0]) == 61
    success, failed = series[3], series[4]
    assert success[0] == 0 and success[15] == 1 and success[-1] == 1
    assert failed[45] == 0 and failed[55] == 1
    assert max(series[2]) == 1  # it ran, once, for a while
    # live: the queued job starts
    runtime.store().update(queued, {"status": "Running", "date_start": local(0)})
    expect(history).to_have_attribute(
        "data-latest",
        json.dumps(
            {"Queued": 0, "Running": 1, "Success": 1, "Failed": 1, "Cancelled": 0, "Pending": 0},
            separators=(",", ":"),
        ),
        timeout=LIVE,
    )


def test_running_jobs_name_their_engine(page, server, user):
    """A real job on the cluster: its Running write names the engine, which becomes a lane."""
    root = get_id_from_user(user)
    job_id, _, _ = submit("default", root, "on an engine", None, add, 1, 2)
    wait_for_status(job_id, "Success", timeout=60)
    info = runtime.store().require(job_id)
    assert info["engine"].startswith("engine "), info
    log_in(page, server)
    expect(page.locator(".moi-stream")).to_have_attribute("data-bars", "1", timeout=LIVE)
    assert chart(page, "c.lanes") == [info["engine"]]
    vendor = page.request.get(f"{server.base}/static/vendor/uplot/LICENSE")
    assert vendor.status == 200 and "MIT License" in vendor.text()
