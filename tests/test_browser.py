"""The live panel in a real browser (headless Chromium through Playwright).

Two halves:

* ``moi.js`` / ``moi_list.js`` against a fake ``WebSocket`` installed in the
  page: the protocol, reconnects, and how frames become DOM, frame by frame;
* the real thing: ``moi serve`` as a subprocess, real Redis and cluster (the
  ``moi_env`` fixture), jobs submitted from the page and from the CLI, and
  the panel changing live.

Waiting is always on an event (Playwright's ``expect`` and ``wait_for_*``
with timeouts); jobs that must stay ``Running`` wait for a file the test
creates.
"""

from __future__ import annotations

import re
import secrets
import signal
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from support import LIVE, add, gated_cmd, log_in, moi_cli, wait_for_status

import moi
from moi import keys, runtime
from moi.group import get_id_from_user
from moi.job import submit

STATIC = Path(moi.moi_js()).parent


# -- half 1: the scripts against a fake WebSocket (fixtures browser, page, watched: conftest.py)
FAKE_WEBSOCKET = """
window.__sockets = [];
class FakeWebSocket extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.readyState = FakeWebSocket.CONNECTING;
    this.sent = [];
    window.__sockets.push(this);
  }
  send(text) {
    if (this.readyState !== FakeWebSocket.OPEN) throw new Error("send on a socket not open");
    this.sent.push(JSON.parse(text));
  }
  close(code = 1000, reason = "") { this._drop(code, reason); }
  _open() { this.readyState = FakeWebSocket.OPEN; this.dispatchEvent(new Event("open")); }
  _frame(frame) { this.dispatchEvent(new MessageEvent("message", {data: JSON.stringify(frame)})); }
  _drop(code = 1006, reason = "") {
    if (this.readyState === FakeWebSocket.CLOSED) return;
    this.readyState = FakeWebSocket.CLOSED;
    this.dispatchEvent(new CloseEvent("close", {code, reason}));
  }
}
Object.assign(FakeWebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
window.WebSocket = FakeWebSocket;
window.sock = () => window.__sockets[window.__sockets.length - 1];
"""

FAKE_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<link rel="stylesheet" href="/static/moi.css"></head>
<body><div id="panel"></div>
<script src="/static/moi.js"></script><script src="/static/moi_list.js"></script>
</body></html>"""


def _serve_static(route: Any) -> None:
    path = route.request.url.split("/static/", 1)[1].split("?")[0]
    kind = "text/css" if path.endswith(".css") else "text/javascript"
    route.fulfill(status=200, content_type=kind, body=(STATIC / path).read_bytes())


@pytest.fixture
def fake(page: Page) -> Page:
    """A page at http://moi.test/ with moi.js, moi_list.js and a fake WebSocket."""
    page.add_init_script(FAKE_WEBSOCKET)
    page.route("**/static/*", _serve_static)
    page.route(
        re.compile(r"^https?://moi\.test/$"),
        lambda route: route.fulfill(status=200, content_type="text/html", body=FAKE_PAGE),
    )
    page.goto("http://moi.test/")
    return page


def job(node_id: str, status: str = "Queued", parent: str = "root", **extra: Any) -> dict:
    """An info object as the server sends it."""
    info = {
        "id": node_id,
        "name": f"job {node_id}",
        "type": "job",
        "pubsub": f"{node_id}:pubsub",
        "url": None,
        "parent": parent,
        "context": "default",
        "status": status,
        "result": None,
        "date_created": "2026-01-01 10:00:00.000001",
        "date_start": None,
        "date_end": None,
    }
    return {**info, **extra}


def group(node_id: str, parent: str = "root", **extra: Any) -> dict:
    return job(node_id, None, parent, **{"type": "group", "name": f"group {node_id}", **extra})


def push(page: Page, *frames: dict) -> None:
    """Deliver frames from the (fake) server to the page's current socket."""
    page.evaluate("frames => frames.forEach(f => window.sock()._frame(f))", list(frames))


def sent(page: Page) -> list[dict]:
    return page.evaluate("window.sock().sent")


def open_panel(page: Page, options: str = "{}") -> None:
    page.evaluate(f"moi_list.init('root', document.getElementById('panel'), {options})")
    page.evaluate("window.sock()._open()")


def test_helpers_safe_urls_dates_and_backoff(fake):
    safe = fake.evaluate(
        """[
        "/job/1", "/a?b=c#d", "http://example.org/x", "HTTPS://example.org",
        "//evil.example", "/\\\\evil.example", "javascript:alert(1)", "JavaScript:alert(1)",
        " javascript:alert(1)", "data:text/html,x", "relative/path", "/a b", "/\\tx",
        "vbscript:x", "", null, 42, "http:/x", "https://", "ftp://example.org"
        ].map(moi_list.safeUrl)"""
    )
    assert safe[:4] == ["/job/1", "/a?b=c#d", "http://example.org/x", "HTTPS://example.org"]
    assert safe[4:] == [None] * 16

    when = fake.evaluate(
        """["2026-11-22 20:53:46.526574", "2026-11-22 20:53:46", "nonsense", null]
           .map(moi_list.parseDate)
           .map(d => d && [d.getFullYear(), d.getMonth() + 1, d.getDate(), d.getHours(),
                           d.getMinutes(), d.getSeconds(), d.getMilliseconds()])"""
    )
    assert when == [[2026, 11, 22, 20, 53, 46, 526], [2026, 11, 22, 20, 53, 46, 0], None, None]

    shown = fake.evaluate(
        "[[400, true], [42500, false], [187000, false], [7500000, false], [-5, false], [40, true]]"
        ".map(([ms, precise]) => moi_list.formatElapsed(ms, precise))"
    )
    assert shown == ["0.4 s", "42 s", "3 min 07 s", "2 h 05 min", "0 s", "< 0.1 s"]

    delays = fake.evaluate(
        "[0,1,2,3,4,5,6,9].map(n => moi.backoffDelay(n, moi.DEFAULTS, () => 0.5))"
    )
    assert delays == [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]
    low, high = fake.evaluate(
        "[() => 0, () => 0.999999].map(r => moi.backoffDelay(1, moi.DEFAULTS, r))"
    )
    assert 740 <= low <= 760 and 1240 <= high <= 1250  # jitter is +-25 %
    assert fake.evaluate("moi.socketUrl('', '/moi-ws/')") == "ws://moi.test/moi-ws/"
    assert fake.evaluate("moi.socketUrl('h:1', '/moi-ws/')") == "ws://h:1/moi-ws/"
    assert fake.evaluate("moi.socketUrl('h:1/moi-ws/', '/x/')") == "ws://h:1/moi-ws/"
    fake.goto("https://moi.test/")
    assert fake.evaluate("moi.socketUrl('', '/moi-ws/')") == "wss://moi.test/moi-ws/"


def test_misuse_throws_clear_errors(fake):
    errors = fake.evaluate(
        """() => {
        const attempts = [
          () => moi.send("get", []),
          () => moi.add_callback("bogus", () => {}),
          () => moi.add_callback("add", "not a function"),
          () => moi.init("", ""),
          () => moi.init("g", "", "not a function"),
          () => moi.init("g", "", null, null, null, {bogus: 1}),
          () => moi_list.init("g", null),
          () => moi_list.init("g", "no-such-div"),
          () => moi_list.init("g", document.body, {bogus: 1}),
          () => moi_list.counts(),
          () => { moi.init("g", ""); moi.init("g", ""); },
        ];
        return attempts.map(f => { try { f(); return null; } catch (e) { return e.message; } });
      }"""
    )
    assert all(isinstance(e, str) and e for e in errors), errors
    assert "moi.init" in errors[0]
    assert "already initialised" in errors[-1]


def test_moi_resyncs_after_every_connect_and_backs_off(fake):
    fake.evaluate(
        """() => {
        window.got = []; window.seen = [];
        for (const type of ["open", "close", "reconnect", "message"]) {
          moi.events.addEventListener(type, () => window.seen.push(type));
        }
        moi.add_callback("update", info => window.got.push(["update", info.id]));
        moi.add_callback("update", info => window.got.push(["again", info.id]));
        moi.init("root", "", () => window.seen.push("on_open"), () => window.seen.push("on_close"),
                 null, {initialDelay: 20, jitter: 0});
      }"""
    )
    assert fake.evaluate("window.sock().url") == "ws://moi.test/moi-ws/"
    fake.evaluate("moi.send('cancel', ['queued-while-connecting'])")
    fake.evaluate("window.sock()._open()")
    assert sent(fake) == [{"batch": True}, {"get": []}, {"cancel": ["queued-while-connecting"]}]
    push(fake, {"update": job("a")})
    assert fake.evaluate("window.got") == [["update", "a"], ["again", "a"]]

    fake.evaluate("window.sock()._drop()")
    assert fake.evaluate("moi.connected") is False
    fake.evaluate("moi.send('remove', ['while-down'])")
    fake.wait_for_function("window.__sockets.length === 2", timeout=5000)
    fake.evaluate("window.sock()._open()")
    assert sent(fake) == [{"batch": True}, {"get": []}, {"remove": ["while-down"]}]
    assert fake.evaluate("window.seen") == [
        "open",
        "on_open",
        "message",
        "close",
        "on_close",
        "reconnect",
        "open",
        "on_open",
    ]

    fake.evaluate("moi.send('close', null)")  # asks the server to close: moi stays closed
    assert sent(fake)[-1] == {"close": None}
    assert fake.evaluate("[moi.initialised, moi.connected]") == [False, False]
    # closed for good: nothing reconnects, and init works again
    fake.wait_for_timeout(100)  # longer than the 20 ms back-off: a reconnect would show
    assert fake.evaluate("window.__sockets.length") == 2
    fake.evaluate(
        "moi.init('root', 'other:1', null, null, null, {initialGet: false, batch: false})"
    )
    fake.evaluate("window.sock()._open()")
    assert fake.evaluate("window.sock().url") == "ws://other:1/moi-ws/"
    assert sent(fake) == []


def test_panel_draws_frames_as_a_live_tree(fake):
    open_panel(fake)
    assert sent(fake) == [{"batch": True}, {"get": []}]
    expect(fake.locator(".moi-connection")).to_have_attribute("data-state", "open")
    push(
        fake,
        {"get": group("root", parent=None, name="the user")},
        {"get": job("orphan", parent="g1")},  # before its parent: kept until it arrives
        {"get": job("j1", "Running", date_start="2026-01-01 10:00:00")},
    )
    panel = fake.locator("#panel")
    expect(panel.locator("[data-id]")).to_have_count(1)
    push(fake, {"add": group("g1", date_created="2026-01-01 10:00:01")})
    expect(panel.locator('[data-id="g1"] [data-id="orphan"]')).to_have_count(1)
    # newest first
    assert panel.locator(":scope > ul > [data-id]").evaluate_all(
        "els => els.map(e => e.dataset.id)"
    ) == ["g1", "j1"]
    assert panel.locator('[data-id="root"]').count() == 0
    assert fake.evaluate("moi_list.counts()") == {
        "Queued": 1,
        "Running": 1,
        "Success": 0,
        "Failed": 0,
        "Cancelled": 0,
    }
    expect(panel.locator('.moi-counts [data-status="Running"]')).to_have_attribute(
        "data-count", "1"
    )

    badge = panel.locator('[data-id="j1"] .moi-status')
    expect(badge).to_have_attribute("data-status", "Running")
    push(fake, {"update": job("j1", "step 2 of 3", date_start="2026-01-01 10:00:00")})
    # a job's own status text counts as Running and shows beside the badge
    expect(badge).to_have_text("Running")
    expect(badge).to_have_attribute("data-status", "step 2 of 3")
    expect(badge).to_have_class(re.compile(r"\bmoi-status-running\b"))
    expect(panel.locator('[data-id="j1"] .moi-status-text')).to_have_text("step 2 of 3")
    expect(panel.locator('[data-id="j1"] .moi-cancel')).to_be_visible()
    done = job("j1", "Success", date_start="2026-01-01 10:00:00", date_end="2026-01-01 10:00:02.5")
    push(fake, {"update": {**done, "url": "/results/j1"}})
    expect(badge).to_have_attribute("data-status", "Success")
    expect(panel.locator('[data-id="j1"] .moi-elapsed')).to_have_text("2.5 s")
    expect(panel.locator('[data-id="j1"] .moi-result')).to_have_attribute("href", "/results/j1")
    expect(panel.locator('[data-id="j1"] .moi-cancel')).to_be_hidden()
    expect(panel.locator('.moi-counts [data-status="Success"]')).to_have_attribute(
        "data-count", "1"
    )
    expect(panel.locator('[data-id="g1"] .moi-progress')).to_have_text(
        "1 job: 0 succeeded, 0 failed, 1 queued"
    )

    push(fake, {"remove": group("g1")})  # takes its subtree along
    expect(panel.locator("[data-id]")).to_have_count(1)
    assert fake.evaluate("moi_list.counts()")["Queued"] == 0

    push(fake, {"error": {"message": "not in your tree: x", "action": "cancel", "ids": ["x"]}})
    line = panel.locator(".moi-error-line")
    expect(line).to_contain_text("not in your tree: x")
    line.locator(".moi-dismiss").click()
    expect(line).to_have_count(0)


def test_panel_renders_data_as_text_and_links_only_safe_urls(fake, watched):
    open_panel(fake)
    evil = "<img src=x onerror=alert(1)>"
    push(
        fake,
        {
            "get": job(
                "x1", evil, name=evil, url="javascript:alert(2)", date_end="2026-01-01 10:00:09"
            )
        },
        {"get": job("x2", "Failed", name="<script>alert(3)</script>", url="//evil.example/")},
        {"get": job("x3", "Success", url="https://example.org/r?a=1&b=<2>")},
    )
    panel = fake.locator("#panel")
    expect(panel.locator('[data-id="x1"] .moi-name')).to_have_text(evil)
    expect(panel.locator('[data-id="x1"] .moi-status-text')).to_have_text(evil)
    assert panel.locator("img, script").count() == 0
    # a custom status is not done: no result link yet; unsafe URLs fall back to the job page
    expect(panel.locator('[data-id="x1"] .moi-result')).to_be_hidden()
    expect(panel.locator('[data-id="x2"] .moi-result')).to_have_attribute("href", "/job/x2")
    expect(panel.locator('[data-id="x3"] .moi-result')).to_have_attribute(
        "href", "https://example.org/r?a=1&b=<2>"
    )
    hrefs = panel.locator("a[href]").evaluate_all("els => els.map(a => a.getAttribute('href'))")
    assert not any(h.lower().startswith(("javascript:", "//")) for h in hrefs), hrefs
    assert watched.dialogs == []


def test_panel_buttons_send_requests_and_read_only_has_none(fake):
    open_panel(fake)
    push(fake, {"get": job("q")}, {"get": job("s", "Success")}, {"get": group("g")})
    panel = fake.locator("#panel")
    panel.locator('[data-id="q"] .moi-cancel').click()
    panel.locator('[data-id="q"] .moi-confirm').click()  # destructive: asked first
    expect(panel.locator('[data-id="q"] .moi-cancel')).to_be_disabled()
    panel.locator('[data-id="s"] .moi-remove').click()
    panel.locator('[data-id="s"] .moi-confirm').click()
    panel.locator('[data-id="g"] .moi-remove').click()
    panel.locator('[data-id="g"] .moi-confirm').click()
    expect(panel.locator('[data-id="g"] > details')).to_have_attribute("open", "")
    assert sent(fake)[2:] == [{"cancel": ["q"]}, {"remove": ["s"]}, {"remove": ["g"]}]
    # the server refused the cancel: the button comes back
    refused = {"message": "job already finished (Success)", "action": "cancel", "ids": ["q"]}
    push(fake, {"error": refused})
    expect(panel.locator('[data-id="q"] .moi-cancel')).to_be_enabled()

    fake.reload()
    open_panel(fake, "{readOnly: true}")
    push(fake, {"get": job("q")}, {"get": group("g")})
    expect(fake.locator("#panel [data-id]")).to_have_count(2)
    assert fake.locator("#panel button.moi-cancel, #panel button.moi-remove").count() == 0

    fake.reload()
    open_panel(fake, "{detailsUrl: null}")  # plain names, no links
    push(fake, {"get": job("p", name="<img src=x onerror=alert(1)>")})
    expect(fake.locator('#panel [data-id="p"] .moi-name')).to_have_text(
        "<img src=x onerror=alert(1)>"
    )
    assert fake.locator("#panel a[href], #panel img").count() == 0


def test_panel_reconnects_and_drops_nodes_removed_while_away(fake):
    open_panel(fake)
    push(fake, {"get": group("root", parent=None)}, {"get": job("kept")}, {"get": job("gone")})
    expect(fake.locator("#panel [data-id]")).to_have_count(2)
    fake.evaluate("window.sock()._drop()")
    expect(fake.locator(".moi-connection")).to_have_attribute("data-state", "closed")
    expect(fake.locator(".moi-connection")).to_contain_text("retrying in")
    fake.wait_for_function("window.__sockets.length === 2", timeout=5000)  # after ~0.5 s
    fake.evaluate("window.sock()._open()")
    assert sent(fake) == [{"batch": True}, {"get": []}]
    push(fake, {"get": group("root", parent=None)}, {"get": job("kept", "Success")})
    expect(fake.locator('#panel [data-id="gone"]')).to_have_count(0)
    expect(fake.locator('#panel [data-id="kept"] .moi-status')).to_have_text("Success")
    expect(fake.locator(".moi-connection")).to_have_attribute("data-state", "open")


# -- half 2: moi serve, the real cluster, the real panel ---------------------------------
# (fixtures browser, page, watched, serve, server, gate: conftest.py)
def cli_submit(user: str, cmd: str, name: str | None = None) -> str:
    """``moi submit`` in a subprocess; the new job's id."""
    args = ["submit", "--user", user, "--cmd", cmd] + (["--name", name] if name else [])
    done = moi_cli(*args)
    assert done.returncode == 0, done.stderr
    found = re.search(r"Submitted job id: (\S+)", done.stdout)
    assert found, done.stdout
    return found.group(1)


def row(page: Page, job_id: str) -> Any:
    return page.locator(f'#moi-panel [data-id="{job_id}"]')


def status_of(page: Page, job_id: str) -> Any:
    return row(page, job_id).locator(".moi-status")


def test_job_from_the_page_form_goes_live_from_running_to_success(page, server, user, gate):
    log_in(page, server)
    name = f"web-{secrets.token_hex(3)}"
    page.fill("#moi-submit-form [name=name]", name)
    page.fill("#moi-submit-form [name=cmd]", gated_cmd(gate))
    page.select_option("#moi-submit-form [name=cmd_type]", "python")
    page.click("#moi-submit-form button[type=submit]")
    expect(page).to_have_url(f"{server.base}/")

    job_row = page.locator("#moi-panel .moi-job", has=page.locator(".moi-name", has_text=name))
    expect(job_row).to_have_count(1, timeout=LIVE)
    badge = job_row.locator(".moi-status")
    expect(badge).to_have_attribute("data-status", "Running", timeout=LIVE)
    job_id = job_row.get_attribute("data-id")
    assert runtime.store().require(job_id)["parent"] == get_id_from_user(user)
    expect(badge).to_have_css("background-color", "rgb(37, 99, 235)")  # Running is blue
    elapsed = job_row.locator(".moi-elapsed")
    expect(elapsed).to_have_text(re.compile(r"^\d+ s$"))
    expect(elapsed).not_to_have_text(elapsed.text_content() or "", timeout=5000)  # it ticks
    expect(job_row.locator(".moi-result")).to_be_hidden()
    assert page.evaluate("moi_list.counts()")["Running"] == 1

    gate.touch()
    expect(badge).to_have_attribute("data-status", "Success", timeout=LIVE)
    expect(badge).to_have_text("Success")
    expect(page.locator('.moi-counts [data-status="Success"]')).to_have_attribute("data-count", "1")
    assert page.evaluate("moi_list.counts()")["Running"] == 0
    expect(job_row.locator(".moi-cancel")).to_be_hidden()
    result = job_row.locator(".moi-result")
    expect(result).to_have_attribute("href", f"/job/{job_id}")  # no url: the job's own page
    result.click()
    expect(page.locator("pre.moi-result")).to_have_text("released")


def test_job_from_the_cli_appears_and_changes_live(page, server, user, gate):
    log_in(page, server)
    expect(page.locator("#moi-panel .moi-empty")).to_be_visible()
    job_id = cli_submit(user, gated_cmd(gate), name="from the cli")
    expect(row(page, job_id).locator(".moi-name")).to_have_text("from the cli", timeout=LIVE)
    expect(status_of(page, job_id)).to_have_attribute("data-status", "Running", timeout=LIVE)
    expect(page.locator("#moi-panel .moi-empty")).to_be_hidden()
    gate.touch()
    expect(status_of(page, job_id)).to_have_attribute("data-status", "Success", timeout=LIVE)
    assert runtime.store().require(job_id)["status"] == "Success"


def test_cancel_button_cancels_a_running_job(page, server, user, gate):
    job_id = cli_submit(user, gated_cmd(gate), name="to cancel")
    wait_for_status(job_id, "Running", timeout=60)
    log_in(page, server)
    expect(status_of(page, job_id)).to_have_attribute("data-status", "Running")
    row(page, job_id).locator(".moi-cancel").click()
    row(page, job_id).locator(".moi-confirm").click()
    expect(status_of(page, job_id)).to_have_attribute("data-status", "Cancelled", timeout=LIVE)
    expect(status_of(page, job_id)).to_have_css("background-color", "rgb(194, 65, 12)")
    expect(row(page, job_id).locator(".moi-cancel")).to_be_hidden()
    expect(page.locator('.moi-counts [data-status="Cancelled"]')).to_have_attribute(
        "data-count", "1"
    )
    info = runtime.store().require(job_id)
    assert info["status"] == "Cancelled" and not gate.exists()  # interrupted, not released


def test_html_in_job_names_statuses_and_urls_stays_text(page, server, user, gate, watched):
    evil = "<img src=x onerror=alert(1)>"
    evil_status = "<b onmouseover=alert(2)>busy</b>"
    named = cli_submit(user, "return 1", name=evil)
    busy = cli_submit(user, f"moi_update_status({evil_status!r})\n{gated_cmd(gate)}", name="busy")
    group_id = get_id_from_user(user)
    bad_url, _, _ = submit("default", group_id, "bad url", "javascript:alert(3)", add, 1, 2)
    good_url, _, _ = submit("default", group_id, "good url", "/results/7?x=<y>", add, 3, 4)
    log_in(page, server)

    expect(status_of(page, named)).to_have_attribute("data-status", "Success", timeout=LIVE)
    expect(row(page, named).locator(".moi-name")).to_have_text(evil)
    expect(row(page, busy).locator(".moi-status-text")).to_have_text(evil_status, timeout=LIVE)
    expect(status_of(page, busy)).to_have_attribute("data-status", evil_status)
    expect(status_of(page, busy)).to_have_css("background-color", "rgb(37, 99, 235)")  # running
    expect(row(page, busy).locator(".moi-cancel")).to_be_visible()  # a custom status still runs
    expect(status_of(page, bad_url)).to_have_attribute("data-status", "Success", timeout=LIVE)
    expect(row(page, bad_url).locator(".moi-result")).to_have_attribute("href", f"/job/{bad_url}")
    expect(status_of(page, good_url)).to_have_attribute("data-status", "Success", timeout=LIVE)
    expect(row(page, good_url).locator(".moi-result")).to_have_attribute("href", "/results/7?x=<y>")

    assert page.locator("#moi-panel img, #moi-panel b, #moi-panel script").count() == 0
    hrefs = page.locator("a[href]").evaluate_all("els => els.map(a => a.getAttribute('href'))")
    assert not any(h.lower().startswith("javascript:") for h in hrefs), hrefs
    row(page, busy).locator(".moi-status-text").hover()
    assert watched.dialogs == []


def test_panel_reconnects_by_itself_after_the_server_restarts(page, server, user):
    log_in(page, server)
    page.evaluate("window.__same_page = true")
    before = cli_submit(user, "return 'before'")
    expect(status_of(page, before)).to_have_attribute("data-status", "Success", timeout=LIVE)

    server.stop(signal.SIGKILL)
    expect(page.locator(".moi-connection")).to_have_attribute("data-state", "closed")
    while_down = cli_submit(user, "return 'while down'")
    wait_for_status(while_down, "Success", timeout=60)
    assert row(page, while_down).count() == 0
    server.start()

    expect(page.locator(".moi-connection")).to_have_attribute("data-state", "open", timeout=LIVE)
    expect(status_of(page, while_down)).to_have_attribute("data-status", "Success", timeout=LIVE)
    after = cli_submit(user, "return 'after'")
    expect(status_of(page, after)).to_have_attribute("data-status", "Success", timeout=LIVE)
    assert page.evaluate("window.__same_page") is True  # never reloaded
    expect(page.locator("#moi-panel .moi-job")).to_have_count(3)


def test_read_only_server_shows_no_buttons_and_refuses_actions(page, serve, user, gate):
    server = serve(read_only=True)
    job_id = cli_submit(user, gated_cmd(gate), name="look, don't touch")
    log_in(page, server)
    expect(status_of(page, job_id)).to_have_attribute("data-status", "Running", timeout=LIVE)
    assert page.locator("#moi-panel .moi-cancel, #moi-panel .moi-remove").count() == 0
    assert page.locator("#moi-submit-form, #moi-group-form").count() == 0
    # a page sending requests anyway is refused by the server, visibly
    page.evaluate("id => moi.send('cancel', [id])", job_id)
    expect(page.locator("#moi-panel .moi-error-line")).to_contain_text("read-only")
    assert runtime.store().require(job_id)["status"] == "Running"


def test_dashboard_runs_under_its_csp_and_logs_out(page, server):
    refused: list[str] = []
    page.on(
        "console", lambda msg: refused.append(msg.text) if "Security Policy" in msg.text else None
    )
    log_in(page, server)  # the panel's inline script ran: it opened the websocket
    page.goto(f"{server.base}/login")  # the login page and its styles, too
    page.goto(f"{server.base}/")
    expect(page.locator(".moi-connection")).to_have_attribute("data-state", "open")
    page.click("#moi-logout-form button[type=submit]")
    expect(page).to_have_url(f"{server.base}/login")
    expect(page.locator("#moi-logout-form")).to_have_count(0)
    page.goto(f"{server.base}/")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    assert refused == []


def test_without_the_token_pages_go_to_the_login_form(page, server):
    page.goto(f"{server.base}/")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    expect(page.locator("input[name=token]")).to_be_visible()
    assert page.locator("#moi-panel").count() == 0
    refused = page.evaluate(
        """url => new Promise(done => {
            const ws = new WebSocket(url);
            ws.onopen = () => done("open");
            ws.onclose = () => done("refused");
        })""",
        f"ws://127.0.0.1:{server.port}/moi-ws/",
    )
    assert refused == "refused"

    page.fill("input[name=token]", "wrong")
    page.click("form button[type=submit]")
    expect(page.locator(".moi-error")).to_have_text("Wrong token.")
    page.fill("input[name=token]", server.token)
    page.click("form button[type=submit]")
    expect(page).to_have_url(f"{server.base}/")
    expect(page.locator(".moi-connection")).to_have_attribute("data-state", "open")


def test_remove_button_removes_the_row_for_good(page, server, user):
    job_id = cli_submit(user, "return 1", name="to remove")
    kept = cli_submit(user, "return 2", name="to keep")
    log_in(page, server)
    expect(status_of(page, job_id)).to_have_attribute("data-status", "Success", timeout=LIVE)
    expect(status_of(page, kept)).to_have_attribute("data-status", "Success", timeout=LIVE)
    row(page, job_id).locator(".moi-remove").click()
    row(page, job_id).locator(".moi-confirm").click()
    expect(row(page, job_id)).to_have_count(0)
    expect(row(page, kept)).to_have_count(1)
    assert page.evaluate("moi_list.counts()")["Success"] == 1
    children = runtime.redis_client().smembers(keys.children(get_id_from_user(user)))
    assert job_id.encode() not in children and kept.encode() in children
    page.reload()
    expect(status_of(page, kept)).to_have_attribute("data-status", "Success")
    expect(row(page, job_id)).to_have_count(0)


def test_group_form_makes_a_collapsible_group_of_jobs(page, server, user):
    log_in(page, server)
    page.fill("#moi-group-form [name=group_name]", "my batch")
    page.fill("#moi-group-form [name=cmds]", "return 1\nreturn 2\n")
    page.click("#moi-group-form button[type=submit]")
    group_row = page.locator("#moi-panel .moi-group", has_text="my batch")
    jobs = group_row.locator(".moi-job")
    expect(jobs).to_have_count(2, timeout=LIVE)
    expect(jobs.locator('.moi-status[data-status="Success"]')).to_have_count(2, timeout=LIVE)
    expect(group_row.locator(".moi-progress")).to_have_text("2 jobs: 2 succeeded, 0 failed")
    expect(jobs.locator(".moi-name")).to_have_text(["my batch #2", "my batch #1"])
    group_row.locator("summary .moi-progress").click()  # folds the group
    expect(jobs.first).to_be_hidden()
    assert page.evaluate("moi_list.counts()")["Success"] == 2


# -- the embedding example ---------------------------------------------------------------
# (fixture example_app: conftest.py)
def test_example_app_submits_from_its_handler_and_the_panel_follows(page, example_app, user):
    page.goto(f"{example_app}/")
    expect(page).to_have_url(re.compile(r"/login\?next="))  # its own auth stands in front
    page.fill("input[name=user]", user)
    page.click("button[type=submit]")
    expect(page.locator("#user")).to_have_text(user)
    expect(page.locator("#jobs .moi-connection")).to_have_attribute("data-state", "open")

    page.click("text=Say hello")
    job_row = page.locator("#jobs .moi-job", has=page.locator(".moi-name", has_text="hello job"))
    expect(job_row).to_have_count(1, timeout=LIVE)
    badge = job_row.locator(".moi-status")
    expect(badge).to_have_attribute("data-status", "about to say hello", timeout=LIVE)
    expect(badge).to_have_attribute("data-status", "Success", timeout=LIVE)
    job_id = job_row.get_attribute("data-id")
    info = runtime.store().require(job_id)
    assert info["result"] == "hi!"
    assert info["parent"] == get_id_from_user(user)
