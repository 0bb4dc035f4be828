"""The dashboard in a real browser: Debian's chromium, headless, driven by
Playwright, against a real server serving ``--http-port``.

Screenshots of the pages go to ``test-output/screenshots/`` (or
``$JOBSTREAM_TEST_OUTPUT/screenshots``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from authmatrix import TOKENS, write_tokens
from conftest import ServerProcess
from helpers import RawWorker, eventually

from jobstream.client import JobClient, JobSpec, JobState, NotFoundError
from jobstream.client.security import Security

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's chromium package (``make test`` installs it); never a download."""

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Quiet, local-only flags: the browser reaches nothing but the test server."""

UI_TIMEOUT_MS = 30_000
"""How long the page may take to show what a test waits for."""

OUTPUT = Path(os.environ.get("JOBSTREAM_TEST_OUTPUT", Path(__file__).parent.parent / "test-output"))
"""Where the run keeps its screenshots."""

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, started once for the module: starting it
    takes about a second, and each test still gets a fresh profile (a
    context of its own: no cookies, storage or cache from another test)."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI (make test installs it)")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def browser_page(browser: Any) -> Iterator[Any]:
    """A page of a fresh browser context (an empty profile)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert errors == [], f"the page raised: {errors}"


def screenshot(page: Any, name: str) -> Path:
    """Saves a screenshot of the whole page under the test output dir."""
    path = OUTPUT / "screenshots" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    return path


WEB_HANDLERS = ("jobstream.client.demo",)
"""What the dashboard's servers run: the demo handlers."""


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the demo handlers and the HTTP face, shared by the
    module's tests that neither stop nor restart it (they keep apart by
    labels and job ids)."""
    data = tmp_path_factory.mktemp("web") / "data"
    data.mkdir()
    server = ServerProcess(data, WEB_HANDLERS, http=True)
    try:
        yield server.start()
    finally:
        server.kill()


def row(page: Any, job_id: str) -> Any:
    return page.locator(f'tr[data-id="{job_id}"]')


def test_job_submitted_over_grpc_appears_without_reload(
    web: ServerProcess, browser_page: Any
) -> None:
    page = browser_page
    list_calls: list[str] = []

    def note(request: Any) -> None:
        if "/v1/jobs?" in request.url:
            list_calls.append(request.url)

    page.on("request", note)
    page.goto(f"{web.http_url}/")
    page.locator("#live.ok").wait_for()
    page.evaluate("window.__sameDocument = true")
    with JobClient(web.target) as client:
        job = client.submit("demo.count", {"n": 20, "delay": 0.05}, labels={"via": "grpc"})
        row(page, job.id).wait_for()
        page.locator(f'tr[data-id="{job.id}"] .state-succeeded').wait_for()
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    assert len(list_calls) == 1, f"the list was fetched again (polling?): {list_calls}"
    assert row(page, job.id).locator("progress").get_attribute("value") == "1"
    assert "summarise" in row(page, job.id).inner_text()
    screenshot(page, "job-list")
    page.click("a[href='#/stats']")
    page.locator("svg.chart rect").first.wait_for()
    assert page.locator("figure").count() == 2
    screenshot(page, "stats")


def test_list_pages_through_the_jobs(web: ServerProcess, browser_page: Any) -> None:
    page = browser_page
    with JobClient(web.target) as client:
        made = client.submit_many(
            [JobSpec(kind="nobody.runs", labels={"suite": "ui-pages"}) for _ in range(120)]
        )
    ids = {job.id for job in made}
    page.goto(f"{web.http_url}/#/?label=suite=ui-pages")

    def shown() -> set[str]:
        page.wait_for_function("() => document.querySelectorAll('tr[data-id]').length > 0")
        return set(page.eval_on_selector_all("tr[data-id]", "rows => rows.map(r => r.dataset.id)"))

    first = shown()
    assert len(first) == 50
    page.click("#older")
    page.wait_for_function("() => document.querySelector('.pager-info').textContent === 'page 2'")
    second = shown()
    page.click("#older")
    page.wait_for_function("() => document.querySelector('.pager-info').textContent === 'page 3'")
    third = shown()
    assert (len(second), len(third)) == (50, 20)
    assert first | second | third == ids
    assert page.locator("#older").is_disabled()
    page.click("#newer")
    page.wait_for_function("() => document.querySelector('.pager-info').textContent === 'page 2'")
    assert shown() == second


def test_job_page_shows_every_line_in_order_across_a_server_restart(
    start_server: Callable[..., ServerProcess], browser_page: Any
) -> None:
    web = start_server(handlers=WEB_HANDLERS, http=True)  # its own: it is killed
    page = browser_page
    with JobClient(web.target) as client:
        job = client.submit("demo.count", {"n": 2000, "delay": 0.003})
        page.goto(f"{web.http_url}/#/jobs/{job.id}")
        page.wait_for_function("() => document.querySelectorAll('#log .line').length >= 300")
        web.kill()
        page.locator("#live.warn").wait_for()  # "reconnecting…"
        assert "reconnecting" in page.locator("#live").inner_text()
        web.restart()
        page.locator(".job-head .state-succeeded").wait_for(timeout=120_000)
        page.wait_for_function("() => document.querySelector('#live').textContent === 'ended'")
        assert "100 %" in page.locator(".job-progress").inner_text()
        stored = [(e.seq, e.log.text) for e in client.logs(job.id) if e.log is not None]
    shown = page.evaluate(
        "[...document.querySelectorAll('#log .line')].map("
        "l => [Number(l.dataset.seq), l.querySelector('.text').textContent])"
    )
    assert [tuple(x) for x in shown] == stored, "lines lost, repeated or out of order"
    assert stored[-1][1] == "counted 2000 items"
    screenshot(page, "job-page")
    # The log tools: a level filter, pause and resume following, the start.
    page.select_option("#level", "WARNING")
    assert page.locator("#log .line").count() == 0  # demo.count logs at info
    page.select_option("#level", "DEBUG")
    assert page.locator("#log .line").count() == len(stored)
    page.click("#jump-start")
    assert page.evaluate("() => document.querySelector('#log').scrollTop") == 0
    assert page.locator("#follow").inner_text() == "Resume follow"
    page.click("#follow")
    assert page.locator("#follow").inner_text() == "Pause follow"
    page.wait_for_function(
        "() => { const l = document.querySelector('#log');"
        " return l.scrollTop + l.clientHeight >= l.scrollHeight - 2; }"
    )


def test_cancel_and_multi_delete_from_the_page(web: ServerProcess, browser_page: Any) -> None:
    page = browser_page
    with JobClient(web.target) as client:
        running = client.submit("demo.sleep", {"seconds": 120}, labels={"suite": "ui-delete"})
        done = [
            client.submit("demo.count", {"n": 2, "delay": 0}, labels={"suite": "ui-delete"})
            for _ in range(2)
        ]
        eventually(lambda: client.get(running.id).state is JobState.RUNNING)
        eventually(lambda: all(client.get(j.id).state.terminal for j in done))
        page.goto(f"{web.http_url}/#/?label=suite=ui-delete")
        row(page, running.id).locator(".state-running").wait_for()

        row(page, running.id).locator("input[type=checkbox]").check()
        page.click("#cancel-selected")
        assert running.id in page.locator("#confirm-list").inner_text()
        page.click("#confirm-yes")
        row(page, running.id).locator(".state-cancelled").wait_for()  # live, no reload
        # A cancelled job leaves the selection, and its box says so.
        row(page, running.id).locator("input[type=checkbox]:not(:checked)").wait_for()

        ids = [running.id, *(j.id for j in done)]
        for job_id in ids:
            box = row(page, job_id).locator("input[type=checkbox]")
            if not box.is_checked():
                box.check()
        page.click("#delete-selected")
        listed = page.locator("#confirm-list").inner_text()
        assert all(job_id in listed for job_id in ids), listed
        assert "artifacts" in page.locator("#confirm-note").inner_text()
        page.click("#confirm-no")  # keep: nothing happens
        assert all(client.get(job_id) for job_id in ids)
        page.click("#delete-selected")
        page.click("#confirm-yes")
        for job_id in ids:
            row(page, job_id).wait_for(state="detached")
        for job_id in ids:
            with pytest.raises(NotFoundError):
                client.get(job_id)


HOSTILE = [
    "<script>window.__pwned = 'script'; alert('script')</script>",
    "<img src=x onerror=\"window.__pwned = 'img'; alert('img')\">",
    "<svg onload=alert('svg')></svg><b>bold?</b>",
]
"""Log lines (and a param) that would run if parsed as HTML."""


def test_markup_in_log_lines_and_params_is_shown_as_text(
    start_server: Callable[..., ServerProcess], browser_page: Any
) -> None:
    server = start_server(http=True)
    page = browser_page
    dialogs: list[str] = []

    def refuse(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", refuse)
    with JobClient(server.target) as client:
        job = client.submit("ui.hostile", {"html": HOSTILE[1]})
    worker = RawWorker(server.target)
    try:
        lease = worker.acquire("ui.hostile")
        worker.log(lease.job.id, lease.lease_id, HOSTILE)
    finally:
        worker.close()
    page.goto(f"{server.http_url}/#/jobs/{job.id}")
    page.wait_for_function("() => document.querySelectorAll('#log .line').length === 3")
    texts = page.locator("#log .line .text").all_inner_texts()
    assert texts == HOSTILE
    assert "<img src=x onerror=" in page.locator("#params").inner_text()  # JSON-quoted
    assert page.locator("#log img, #log script, #log svg, #log b").count() == 0
    page.wait_for_timeout(500)  # give any injected handler its chance to run
    assert page.evaluate("window.__pwned") is None
    assert dialogs == []


def test_sign_in_keeps_the_token_out_of_scripts(
    start_server: Callable[..., ServerProcess], browser_page: Any, tmp_path: Path
) -> None:
    tokens = write_tokens(tmp_path / "tokens.json")
    server = start_server(extra_args=("--tokens-file", str(tokens)), http=True)
    page = browser_page
    page.goto(f"{server.http_url}/")
    page.wait_for_url("**/signin")
    page.fill("#token", "wrong-token")
    page.click("button[type=submit]")
    page.wait_for_url("**/signin?error=rejected")
    assert "did not accept" in page.inner_text("body")
    page.fill("#token", TOKENS["alice"][0])
    page.click("button[type=submit]")
    page.locator("table.jobs").wait_for()
    page.locator("#live.ok").wait_for()
    assert TOKENS["alice"][0] not in page.evaluate("document.cookie")
    assert TOKENS["alice"][0] not in page.url
    page.click("a[href='#/submit']")
    page.fill("#kind", "nobody.runs")
    page.fill("#params-json", '{"n": 1}')
    page.click("#submit")
    page.locator(".job-head h1").wait_for()
    job_id = page.locator(".job-head h1").inner_text()
    with JobClient(server.target, security=Security(token=TOKENS["alice"][0])) as client:
        assert client.get(job_id).owner == "alice"


def test_failed_job_shows_its_error_and_traceback_as_text(
    web: ServerProcess, browser_page: Any
) -> None:
    page = browser_page
    hostile = "<img src=x onerror=\"window.__pwned = 'error'\">"
    with JobClient(web.target) as client:
        job = client.submit("demo.fail", {"message": hostile}, max_attempts=1)
        eventually(lambda: client.get(job.id).state is JobState.FAILED)
    page.goto(f"{web.http_url}/#/jobs/{job.id}")
    page.locator("#error").wait_for()
    assert hostile in page.locator("#error").inner_text()
    trace = page.locator("pre.traceback").inner_text()
    assert "RuntimeError" in trace and hostile in trace
    assert page.locator("#retry").is_visible()
    assert page.evaluate("window.__pwned") is None


def test_a_long_log_opens_at_its_tail_and_jumps_to_its_start(
    start_server: Callable[..., ServerProcess], browser_page: Any
) -> None:
    server = start_server(http=True)
    page = browser_page
    with JobClient(server.target) as client:
        job = client.submit("ui.long")
    worker = RawWorker(server.target)
    try:
        lease = worker.acquire("ui.long")
        for chunk in range(5):  # 25,000 lines: past the page's 20,000-event tail
            worker.log(job.id, lease.lease_id, [f"line {chunk * 5000 + i}" for i in range(5000)])
        worker.finish(job.id, lease.lease_id)
    finally:
        worker.close()
    page.goto(f"{server.http_url}/#/jobs/{job.id}")
    page.locator("#live.ok, #live:text('ended')").first.wait_for()
    page.wait_for_function("() => document.querySelector('#log .line:last-child .text')"
                           "?.textContent === 'line 24999'")  # fmt: skip
    assert "not loaded" in page.locator("#log-gap").inner_text()
    first_tail = page.locator("#log .line .text").first.inner_text()
    assert first_tail != "line 0"
    page.click("#jump-start")
    page.wait_for_function(
        "() => document.querySelector('#log .line .text').textContent === 'line 0'"
    )
    assert "in the download" in page.locator("#log-gap").inner_text()
    assert page.evaluate("() => document.querySelector('#log').scrollTop") == 0


def test_workers_page_and_queued_jobs_no_worker_serves(
    web: ServerProcess, browser_page: Any
) -> None:
    page = browser_page
    suite = {"suite": "ui-workers"}
    with JobClient(web.target) as client:
        running = client.submit("demo.sleep", {"seconds": 120}, labels=suite)
        eventually(lambda: client.get(running.id).state is JobState.RUNNING)
        stray = client.submit("nobody.serves", labels=suite)
        later = datetime.now(UTC) + timedelta(hours=1)
        [waiting] = client.submit_many(
            [JobSpec(kind="demo.count", labels=suite, schedule_time=later)]
        )
        [embedded] = eventually(
            lambda: [w for w in client.workers() if w.live and w.running_jobs == 1] or None
        )
    page.goto(f"{web.http_url}/#/?label=suite=ui-workers")
    mark = row(page, stray.id).locator(".unserved")
    mark.wait_for()
    assert mark.get_attribute("title") == (
        "no live worker serves kind nobody.serves on queue default"
    )
    # Queued too, but of a kind the live worker takes: not marked.
    assert row(page, waiting.id).locator(".unserved").count() == 0
    assert row(page, running.id).locator(".unserved").count() == 0
    screenshot(page, "job-list-unserved")

    page.click("a[href='#/workers']")
    shown = page.locator(f'tr.live-worker[data-id="{embedded.worker_id}"]')
    shown.wait_for()
    assert shown.locator("td").nth(1).inner_text() == embedded.host != ""
    assert "demo.count" in shown.locator(".kinds").inner_text().split(", ")
    assert shown.locator(".queues").inner_text() == ", ".join(embedded.queues)
    assert shown.locator(".concurrency").inner_text() == str(embedded.concurrency)
    assert shown.locator(".running").inner_text() == "1"
    assert shown.locator(".seen").inner_text().endswith(("ago", "now"))
    assert page.locator("#workers-summary").inner_text().startswith("1 live")
    screenshot(page, "workers")
    with JobClient(web.target) as client:
        for job in (running, stray, waiting):
            client.cancel(job.id)
