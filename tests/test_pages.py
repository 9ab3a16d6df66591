"""The job and group pages, the error page and the embedding example, in real Chromium.

``moi serve`` runs as a subprocess against the real Redis and cluster (the
``moi_env`` fixture); the pages must follow the jobs live over the
websocket, show the call, durations and a Cancel that asks first, and keep
internal fields out.  Waiting is always on an event (Playwright's
``expect``); jobs that must stay ``Running`` wait for a file the test creates.
"""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect
from support import LIVE, MoiServer, gated_cmd, wait_for_status

from moi import runtime
from moi.group import create_info, get_id_from_user
from moi.job import describe_call, python_call, submit, wait


def open_page(page: Page, server: MoiServer, path: str) -> None:
    """Log in through the token URL straight onto ``path``; wait until the page is live."""
    page.goto(f"{server.base}{path}?token={server.token}")
    expect(page).to_have_url(f"{server.base}{path}")
    expect(page.locator(".moi-page-live")).to_have_attribute("data-state", "open")


def submit_cmd(parent: str, cmd: str, name: str) -> str:
    job_id, _, _ = submit(None, parent, name, None, python_call, cmd)
    return job_id


# -- the job page ----------------------------------------------------------------------------
def test_job_page_shows_the_call_and_follows_the_job_live(page, server, user, gate):
    cmd = gated_cmd(gate)
    job_id = submit_cmd(get_id_from_user(user), cmd, "live job")
    wait_for_status(job_id, "Running", timeout=60)
    open_page(page, server, f"/job/{job_id}")

    expect(page.locator("h1")).to_have_text("Job: live job")
    call = describe_call(python_call, (cmd,), {})  # the command, cut at 200 characters
    assert call.startswith("import os, time\n")
    expect(page.locator("pre.moi-call")).to_have_text(call)
    expect(page.locator(".moi-status")).to_have_attribute("data-status", "Running")
    fields = page.locator(".moi-fields tr")
    expect(page.locator(".moi-fields tr[data-field]")).not_to_have_count(0)
    assert not any(text.startswith("pubsub") for text in fields.all_inner_texts())
    for internal in ("pubsub", "type", "call"):  # the call shows once, above the table
        expect(page.locator(f'.moi-fields tr[data-field="{internal}"]')).to_have_count(0)
    duration = page.locator(".moi-page-head .moi-duration")
    expect(duration).to_have_text(re.compile(r"\d"))
    first = duration.inner_text()
    expect(duration).not_to_have_text(first, timeout=LIVE)  # it ticks while the job runs
    expect(page.locator(".moi-result")).to_have_text("(not finished)")

    gate.touch()
    expect(page.locator(".moi-status")).to_have_attribute("data-status", "Success", timeout=LIVE)
    expect(page.locator(".moi-result")).to_have_text("released")
    expect(page.locator(".moi-cancel")).to_be_hidden()
    ended = duration.inner_text()
    assert re.fullmatch(r"(< 0\.1|\d+(\.\d)?) s|\d+ min \d\d s", ended), ended
    expect(page.locator('.moi-fields tr[data-field="date_end"] td')).not_to_have_text("")


def test_cancel_on_the_job_page_asks_first(page, server, user, gate):
    job_id = submit_cmd(get_id_from_user(user), gated_cmd(gate), "to cancel")
    wait_for_status(job_id, "Running", timeout=60)
    open_page(page, server, f"/job/{job_id}")
    cancel = page.locator(".moi-cancel")
    expect(cancel).to_be_enabled()

    cancel.click()
    expect(page.locator(".moi-confirm")).to_be_visible()
    page.locator(".moi-confirm-no").click()  # changed our mind: nothing is sent
    expect(page.locator(".moi-confirm")).to_be_hidden()
    expect(cancel).to_be_visible()
    assert runtime.store().require(job_id)["status"] == "Running"

    cancel.click()
    page.locator(".moi-confirm-yes").click()
    expect(page.locator(".moi-status")).to_have_attribute("data-status", "Cancelled", timeout=LIVE)
    expect(page.locator(".moi-result-title")).to_have_text("Traceback")
    expect(cancel).to_be_hidden()
    assert wait(job_id, timeout=30)["status"] == "Cancelled"


def test_read_only_job_page_has_no_cancel(page, serve, user, gate):
    server = serve(read_only=True)
    job_id = submit_cmd(get_id_from_user(user), gated_cmd(gate), "read only")
    wait_for_status(job_id, "Running", timeout=60)
    open_page(page, server, f"/job/{job_id}")
    expect(page.locator(".moi-status")).to_have_attribute("data-status", "Running")
    expect(page.locator(".moi-cancel")).to_have_count(0)


# -- the group page ------------------------------------------------------------------------
def test_group_page_counts_successes_and_failures_and_adds_jobs_live(page, server, user, gate):
    group = create_info("batch", "group", parent=get_id_from_user(user), store=True)
    ok = submit_cmd(group["id"], "return 1", "fine")
    bad = submit_cmd(group["id"], "return 1 / 0", "broken")
    wait(ok, timeout=60)
    wait(bad, timeout=60)
    open_page(page, server, f"/group/{group['id']}")
    counts = page.locator(".moi-page-counts")
    expect(counts).to_have_text("2 jobs: 1 Success, 1 Failed")
    expect(page.locator(f'.moi-rows tr[data-id="{bad}"] .moi-call')).to_have_text("return 1 / 0")

    late = submit_cmd(group["id"], gated_cmd(gate), "late")
    row = page.locator(f'.moi-rows tr[data-id="{late}"]')
    expect(row.locator(".moi-status")).to_have_attribute("data-status", "Running", timeout=LIVE)
    expect(counts).to_have_text("3 jobs: 1 Running, 1 Success, 1 Failed")
    expect(row.locator(".moi-duration")).to_have_text(re.compile(r"\d"))
    gate.touch()
    expect(counts).to_have_text("3 jobs: 2 Success, 1 Failed", timeout=LIVE)
    expect(row.locator(".moi-name a")).to_have_attribute("href", f"/job/{late}")


# -- the error page --------------------------------------------------------------------------
def test_unknown_ids_get_the_styled_error_page(page, server, user):
    stranger = "3f1c2b6e-0000-4000-8000-000000000000"
    page.goto(f"{server.base}/?token={server.token}")
    response = page.goto(f"{server.base}/job/{stranger}")
    assert response is not None and response.status == 404
    expect(page.locator("h1")).to_have_text("No such job")
    expect(page.locator(".moi-error")).to_contain_text(stranger)
    expect(page.locator(".moi-header .moi-brand")).to_be_visible()
    border = page.locator(".moi-error").evaluate("e => getComputedStyle(e).borderLeftStyle")
    assert border == "solid"  # moi.css applies

    response = page.goto(f"{server.base}/nowhere/at/all")
    assert response is not None and response.status == 404
    expect(page.locator("h1")).to_have_text("Not found")


# -- the embedding example -------------------------------------------------------------------
def test_example_styles_its_panel_and_serves_the_result_links(page, example_app, user):
    page.goto(f"{example_app}/login")
    page.fill("input[name=user]", user)
    page.click("button[type=submit]")
    expect(page.locator("#jobs .moi-connection")).to_have_attribute("data-state", "open")
    panel = page.locator("#jobs.moi-panel")
    expect(panel).to_have_count(1)
    assert panel.evaluate("e => getComputedStyle(e).borderTopStyle") == "solid"  # moi.css

    page.click("text=Say hello")
    job_row = page.locator("#jobs .moi-job", has=page.locator(".moi-name", has_text="hello job"))
    expect(job_row.locator(".moi-status")).to_have_attribute("data-status", "Success", timeout=LIVE)
    link = job_row.locator("a.moi-result")
    expect(link).to_have_attribute("href", re.compile(r"^/job/"))
    response_future = page.expect_response(re.compile(r"/job/"))
    with response_future as info:
        link.click()
    assert info.value.status == 200
    expect(page.locator("h1")).to_have_text("job: The hello job")
    expect(page.locator(".moi-result")).to_have_text("hi!")

    # another user's job is not found there
    other = submit_cmd(get_id_from_user(f"{user}-other"), "return 0", "not yours")
    response = page.goto(f"{example_app}/job/{other}")
    assert response is not None and response.status == 404
