"""log_overhead and log_latency_p99: the cost and the speed of live output (moi.logs).

``log_overhead``: wall time of a job printing 100,000 lines as fast as it can
(:func:`printer`), submitted through ``moi.job.submit`` (its output captured
and kept in Redis, nobody watching) against the same function through
``ctx.bv.apply_async`` on the same cluster (plain ipyparallel: the output only
reaches ``ar.stdout``); interleaved rounds, each side's median.
``log_overhead_cpu``: the CPU seconds the engine processes used in those same
rounds (psutil), which a loaded machine disturbs far less than wall time.

``log_latency_p99``: a job prints a line with its ``time.time()`` every 20 ms;
a real headless Chromium (Playwright, Debian's ``chromium``) shows the job's
``/log/<id>`` page of a ``moi serve`` subprocess, and a MutationObserver
records when each line is in the page.  The baseline is the same lines
reaching a plain Redis subscriber of the job's log channel (the engine's
shipping alone: the floor the server and the browser add to).
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from results import Result

ROUNDS = 7
#: A line every this many seconds in the latency job.
PERIOD = 0.02


def printer(lines: int, **kwargs: Any) -> int:
    """Job: print ``lines`` lines as fast as it can."""
    for i in range(lines):
        print("line", i, "of the benchmark's flood of output")
    return lines


def _engines_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the engine processes have used so far."""
    import psutil

    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def _overhead(quick: bool) -> list[Result]:
    from moi import job
    from moi.context import resolve
    from moi.group import get_id_from_user

    lines = 10_000 if quick else 100_000
    ctx = resolve(None)
    ctx.client.wait_for_engines(2, timeout=120)
    pids = ctx.client[:].apply_sync(os.getpid)
    parent = get_id_from_user("bench-logs")
    sides = {
        "moi": lambda: job.submit(ctx, parent, "printer", None, printer, lines)[2],
        "ipyparallel": lambda: ctx.bv.apply_async(printer, lines),
    }
    rounds = 3 if quick else ROUNDS
    wall: dict[str, list[float]] = {side: [] for side in sides}
    cpu: dict[str, list[float]] = {side: [] for side in sides}
    for side in sides.values():  # warm-up
        side().get(timeout=600)
    for round_ in range(rounds):  # taking turns to go first
        for name in list(sides) if round_ % 2 == 0 else list(sides)[::-1]:
            cpu0, start = _engines_cpu(pids), time.perf_counter()
            sides[name]().get(timeout=600)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(_engines_cpu(pids) - cpu0)
    best = min(wall["moi"]) / min(wall["ipyparallel"])
    what = f"a job printing {lines:,} lines, captured and kept by moi (nobody watching) vs "
    return [
        Result(
            "log_overhead",
            statistics.median(wall["moi"]),
            statistics.median(wall["ipyparallel"]),
            "s",
            target="ratio <= 1.10",
            note=what + f"the same function through plain apply_async: wall time, median of "
            f"{rounds} interleaved rounds; fastest rounds' ratio {best:.3f}",
        ),
        Result(
            "log_overhead_cpu",
            statistics.median(cpu["moi"]),
            statistics.median(cpu["ipyparallel"]),
            "s",
            target="ratio <= 1.10",
            note=what + "the same through plain apply_async: CPU seconds the engine processes "
            f"used (psutil; the tee, the shipping thread, moi's wrapper), median of {rounds} "
            "rounds; Redis's own work is not in it",
        ),
    ]


LATENCY_JOB = """
import os, time
print('ready', flush=True)
while not os.path.exists({go!r}):
    time.sleep(0.01)
for i in range({lines}):
    print(f'line {{i}} t={{time.time():.6f}}', flush=True)
    time.sleep({period})
return {lines}
"""

OBSERVER = """() => {
  window.__latencies = [];
  const pre = document.querySelector('.moi-log-lines');
  new MutationObserver((records) => {
    const now = (performance.timeOrigin + performance.now()) / 1000;
    for (const record of records) {
      for (const node of record.addedNodes) {
        for (const match of node.textContent.matchAll(/ t=([0-9.]+)/g)) {
          window.__latencies.push(now - parseFloat(match[1]));
        }
      }
    }
  }).observe(pre, {childList: true});
}"""


def _subscriber_latencies(channel: str, ready: threading.Event, out: list[float]) -> None:
    """Record when each timed line reaches a plain Redis subscriber of ``channel``."""
    import json

    from moi import runtime

    with runtime.redis_client().pubsub(ignore_subscribe_messages=True) as sub:
        sub.subscribe(channel)
        ready.set()
        idle_since = time.monotonic()
        deadline = time.monotonic() + 120  # the page loads before the first timed line
        while time.monotonic() < deadline:
            message = sub.get_message(timeout=0.5)
            if message is None:
                if out and time.monotonic() - idle_since > 3:
                    return
                continue
            now, idle_since = time.time(), time.monotonic()
            for line in json.loads(message["data"])["lines"]:
                if " t=" in line:
                    out.append(now - float(line.rsplit("t=", 1)[1]))


def _latency(quick: bool) -> list[Result]:
    from playwright.sync_api import sync_playwright
    from wsload import percentile

    from moi import keys, redis_server
    from moi.group import get_id_from_user
    from moi.job import python_call, submit

    lines = 100 if quick else 500
    user = f"bench-logs-{secrets.token_hex(3)}"
    token, port = secrets.token_urlsafe(24), redis_server.free_port()
    with tempfile.TemporaryDirectory(prefix="moi-bench-logs-") as tmp:
        go = Path(tmp) / "go"
        serve_log = (Path(tmp) / "serve.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "moi.cli", "serve", "--port", str(port), "--user", user],
            env={**os.environ, "MOI_TOKEN": token},
            stdout=serve_log,
            stderr=subprocess.STDOUT,
        )
        try:
            from services import wait_for_port

            wait_for_port(port, 60, server)
            cmd = LATENCY_JOB.format(go=str(go), lines=lines, period=PERIOD)
            job_id, _, ar = submit(None, get_id_from_user(user), "timed", None, python_call, cmd)
            floor: list[float] = []
            ready = threading.Event()
            listener = threading.Thread(
                target=_subscriber_latencies, args=(keys.log_channel(job_id), ready, floor)
            )
            listener.start()
            ready.wait(10)
            chromium = os.environ.get("MOI_CHROMIUM") or shutil.which("chromium")
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=chromium or "/usr/bin/chromium",
                    args=["--headless=new", "--no-sandbox", "--disable-gpu"],
                )
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/?token={token}")
                page.goto(f"http://127.0.0.1:{port}/log/{job_id}")
                page.locator(".moi-log-lines").get_by_text("ready").wait_for(timeout=60_000)
                page.evaluate(OBSERVER)
                go.write_text("go")
                ar.get(timeout=120)
                page.wait_for_function(f"window.__latencies.length >= {lines}", timeout=60_000)
                seen = [s * 1000 for s in page.evaluate("window.__latencies")]
                browser.close()
            listener.join(30)
        finally:
            server.terminate()
            server.wait(10)
            serve_log.close()
    floor_ms = [s * 1000 for s in floor]
    note = (
        f"{lines} lines, one every {PERIOD * 1000:.0f} ms, from print() on the engine to the "
        f"text in a real Chromium's Log view (p50 {percentile(seen, 50):.1f} ms); baseline: "
        f"the same lines reaching a plain Redis subscriber of the log channel "
        f"(p50 {percentile(floor_ms, 50):.1f} ms)"
    )
    return [
        Result(
            "log_latency_p99",
            percentile(seen, 99),
            percentile(floor_ms, 99),
            "ms",
            target="value <= 100",
            note=note,
        )
    ]


def run(quick: bool) -> list[Result]:
    """Both figures (the latency first: it wants a quiet cluster)."""
    return [*_latency(quick), *_overhead(quick)]
