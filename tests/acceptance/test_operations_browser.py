"""The admin's operations page in a real headless Chromium, driven by selenium through Debian's
chromedriver, against a real server and worker (`manage.py start`, shared mode): a staff user
logs in, watches a chain's steps appear and finish on the self-refreshing page, and retries a
dead job from its page until it succeeds.

Chromium and chromedriver are Debian's `chromium` and `chromium-driver` packages: the session
fixtures install them with apt-get when missing and the tests run as root, and skip otherwise,
saying why. chromedriver (and the Chromium it starts) runs in a process group of its own, killed
as a group when the test ends; no process of the test's browser profile may survive it.
Screenshots go to the test's tmp dir and are copied to /tmp/conveyor-screens/ (or the folder
CONVEYOR_SCREENS names), which the test prints.

Issue 26's pages, read at 1400 px: the jobs list (every column on screen, one line per job, a
dead job's last error), a job's page with its attempt history, a chain's page with a group, the
operations page during a run and after a cancel (unreached steps "not reached", every live
worker listed, idle too); none overflows sideways.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from jobs.engine.creation import Group, Step, enqueue_step, start_chain
from jobs.models import Chain, Job
from tests.support import wait_chain, wait_job

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

SCREENS = Path(os.environ.get("CONVEYOR_SCREENS", "/tmp/conveyor-screens"))
PASSWORD = "a-long-browser-test-password"


@pytest.fixture
def browser(chromium: str, chromedriver: str) -> Iterator[object]:
    """A selenium WebDriver on a headless Chromium that resolves no host but 127.0.0.1."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="cvops-", dir="/tmp")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        "--no-first-run", "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--window-size=1400,900", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(arg)
    log = Path(profile).with_suffix(".chromedriver.log")
    # Its own session: chromedriver leads a process group that its Chromium joins.
    service = Service(executable_path=chromedriver, log_output=str(log), popen_kw={"start_new_session": True})
    driver = webdriver.Chrome(service=service, options=options)
    pid = service.process.pid
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            try:
                os.killpg(pid, signal.SIGKILL)  # whatever of the group quit left behind
            except ProcessLookupError:
                pass
            left = [p for p in psutil.process_iter(["cmdline"]) if any(profile in part for part in p.info["cmdline"] or [])]
            for proc in left:
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(left, timeout=10)
            shutil.rmtree(profile, ignore_errors=True)
            log.unlink(missing_ok=True)
            assert not left, f"chromium processes survived their browser: {[p.pid for p in left]}"


def wait_dom(driver, predicate, timeout: float, what: str):
    """Poll the live DOM (as the page's own script changes it) until `predicate(driver)` is truthy."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate(driver)
        except (StaleElementReferenceException, WebDriverException):
            value = None  # the fragment was swapped under the lookup: look again
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} in the page:\n{driver.page_source[:4000]}")
        time.sleep(0.1)


def shoot(driver, tmp_path: Path, name: str) -> Path:
    """A PNG of the whole page: in the test's tmp dir and copied to /tmp/conveyor-screens/."""
    height = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    driver.set_window_size(1400, min(max(int(height) + 40, 800), 6000))
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot for {name}"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENS / path.name)
    print(f"screenshot: {SCREENS / path.name}")
    return path


def fits_the_width(driver, what: str) -> None:
    """Nothing of the page is off-screen sideways at 1400 px (no horizontal scroll), nor in a box
    of its own that scrolls."""
    wide, seen = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert wide <= seen, f"{what}: {wide} px wide in a {seen} px window"
    hidden = driver.execute_script(
        "return Array.from(document.querySelectorAll('#content *')).filter(e => e.scrollWidth > e.clientWidth + 1"
        " && ['auto', 'scroll', 'hidden'].includes(getComputedStyle(e).overflowX) && getComputedStyle(e).textOverflow !== 'ellipsis')"
        ".map(e => `${e.className || e.tagName}: ${e.scrollWidth} > ${e.clientWidth}`)"
    )
    assert not hidden, f"{what}: content scrolls sideways in {hidden}"


def step_status(driver, chain_id: int, index: int) -> str | None:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f'#operations [data-chain="{chain_id}"] [data-step="{index}"]')
    return found[0].get_attribute("data-status") if found else None


@pytest.mark.timeout(900)  # the first run may install chromium and chromium-driver first
def test_operations_page_live_chain_and_retry_of_a_dead_job(live, browser, tmp_path):
    from selenium.webdriver.common.by import By

    driver = browser
    # given a real server and worker, and a staff user
    server = live.start(mode="shared")
    get_user_model().objects.create_superuser("ops", "ops@example.com", PASSWORD)

    # when the user logs in through the admin's form, Conveyor's (issue 26)
    driver.get(server.url("/admin/login/?next=/admin/"))
    assert "Conveyor administration" in driver.find_element(By.ID, "site-name").text and "Django" not in driver.title
    driver.find_element(By.NAME, "username").send_keys("ops")
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, 'input[type="submit"]').click()
    wait_dom(driver, lambda d: d.find_elements(By.ID, "operations-link"), 15, "the admin index's operations link")

    # and opens the operations page from the index
    driver.find_element(By.CSS_SELECTOR, '#operations-link a[href="/admin/operations/"]').click()
    wait_dom(driver, lambda d: d.find_elements(By.ID, "ops-queues"), 15, "the operations page")
    driver.execute_script("window.conveyorNoReload = true;")  # gone if the page reloads in full

    # and a chain starts while the page is open
    chain = start_chain([Step("examples.sleep", {"seconds": 3}), Step("examples.echo", {"from": "browser"})])

    # then its steps appear without a reload: the sleep runs (its worker and progress bar shown)...
    wait_dom(driver, lambda d: step_status(d, chain.pk, 0) == "running", 20, f"chain {chain.pk}'s step 0 running")
    assert step_status(driver, chain.pk, 1) == "waiting"  # planned, no job yet
    workers = driver.find_element(By.ID, "ops-workers").text
    assert "examples.sleep" in workers and driver.find_elements(By.CSS_SELECTOR, "#ops-workers .ops-worker"), workers
    assert driver.find_elements(By.CSS_SELECTOR, "#ops-workers progress")
    shoot(driver, tmp_path, "1-operations-chain-running")

    # ...then both steps succeed, the second's handoff shown
    wait_chain(chain.pk, "succeeded", 30)
    wait_dom(driver, lambda d: step_status(d, chain.pk, 1) == "succeeded", 10, f"chain {chain.pk}'s step 1 succeeded")
    chain_box = driver.find_element(By.CSS_SELECTOR, f'#operations [data-chain="{chain.pk}"]')
    assert "handoff" in chain_box.find_element(By.CSS_SELECTOR, '[data-step="1"]').text
    assert len(chain_box.find_elements(By.CSS_SELECTOR, ".ops-bar")) == 2
    throughput = driver.find_element(By.ID, "ops-throughput").text
    assert "examples.sleep" in throughput and "examples.echo" in throughput, throughput
    assert driver.execute_script("return window.conveyorNoReload === true"), "the page reloaded instead of swapping its fragment"
    shoot(driver, tmp_path, "2-operations-chain-succeeded")

    # and the chain's own page lists each planned step with its job, worker, timings and handoff
    chain_box.find_element(By.CSS_SELECTOR, f'a[href="/admin/jobs/chain/{chain.pk}/change/"]').click()
    rows = wait_dom(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "table.chain-plan tr.chain-step"), 15, "the chain's steps")
    assert [row.get_attribute("data-status") for row in rows] == ["succeeded", "succeeded"]
    assert rows[1].text.rstrip().endswith(" s"), rows[1].text
    assert "STARTED (UTC)" in driver.find_element(By.CSS_SELECTOR, "table.chain-plan thead").text.upper()
    shoot(driver, tmp_path, "2b-chain-page")
    driver.back()
    wait_dom(driver, lambda d: d.find_elements(By.ID, "ops-queues"), 15, "the operations page again")

    # when a chain with a group of three members on two queues runs
    group_chain = start_chain([
        Step("examples.echo", {"group": "before"}),
        Group([Step("examples.member", {"n": 0}), Step("examples.member-images", {"n": 1}), Step("examples.member", {"n": 2})]),
        Step("examples.echo", {"group": "after"}),
    ])
    wait_chain(group_chain.pk, "succeeded", 60)
    # then the page shows the group as one step, its members under it in order, all succeeded
    wait_dom(driver, lambda d: step_status(d, group_chain.pk, 2) == "succeeded", 15, f"chain {group_chain.pk}'s last step")
    group_box = driver.find_element(By.CSS_SELECTOR, f'#operations [data-chain="{group_chain.pk}"]')
    assert "group of 3" in group_box.find_element(By.CSS_SELECTOR, '.ops-group[data-step="1"]').text
    members = group_box.find_elements(By.CSS_SELECTOR, '.ops-member[data-step="1"]')
    assert [(m.get_attribute("data-member"), m.get_attribute("data-status")) for m in members] == [
        ("0", "succeeded"), ("1", "succeeded"), ("2", "succeeded"),
    ]
    assert "examples.member-images" in members[1].text
    shoot(driver, tmp_path, "2c-operations-group")
    # and a group's members, a <details> open for a small group, stay as the user left them across
    # the page's refreshes: closed here, checked closed once the dead jobs below have appeared
    assert group_box.find_element(By.CSS_SELECTOR, "details.ops-members").get_attribute("open") is not None
    group_box.find_element(By.CSS_SELECTOR, "details.ops-members > summary").click()

    # when two jobs die (one attempt each, failing it)
    job, _ = enqueue_step(Step("examples.fail", {"times": 1}, retries=0))
    other, _ = enqueue_step(Step("examples.fail", {"times": 1}, retries=0))
    wait_job(job.pk, "dead", 30)
    wait_job(other.pk, "dead", 30)

    # then the operations page lists it with a retry button
    dead_row = f'#ops-dead tr[data-job="{job.pk}"]'
    wait_dom(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"{dead_row} button.ops-retry"), 10, f"dead job {job.pk}'s row")
    assert "RuntimeError: examples.fail: failing attempt 1" in driver.find_element(By.CSS_SELECTOR, dead_row).text
    closed = driver.find_element(By.CSS_SELECTOR, f'#operations [data-chain="{group_chain.pk}"] details.ops-members')
    assert closed.get_attribute("open") is None, "the group's members opened again when the page refreshed"
    shoot(driver, tmp_path, "3-operations-dead-job")

    # then the operations page's own Retry button (a POST with CSRF) brings one back
    other_row = f'#ops-dead tr[data-job="{other.pk}"]'
    wait_dom(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"{other_row} button.ops-retry"), 10, f"dead job {other.pk}'s row")
    driver.find_element(By.CSS_SELECTOR, f"{other_row} button.ops-retry").click()
    wait_dom(
        driver,
        lambda d: f"Job {other.pk} (examples.fail) queued again" in d.find_element(By.CSS_SELECTOR, "ul.messagelist").text,
        15,
        "the retry's message",
    )
    assert wait_job(other.pk, "succeeded", 30).attempt == 2
    wait_dom(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, dead_row) and not d.find_elements(By.CSS_SELECTOR, other_row),
        10,
        f"job {other.pk} gone from the dead list",
    )

    # when the user opens the job's page: its error preformatted, a Retry button, no Save or Delete
    driver.find_element(By.CSS_SELECTOR, f'{dead_row} a[href="/admin/jobs/job/{job.pk}/change/"]').click()
    wait_dom(driver, lambda d: d.find_elements(By.ID, "job-retry"), 15, f"job {job.pk}'s Retry button")
    error = driver.find_element(By.CSS_SELECTOR, ".field-error_text pre.conveyor-pre").text
    assert error.startswith("Traceback (most recent call last):") and "failing attempt 1" in error, error
    assert not driver.find_elements(By.NAME, "_save") and not driver.find_elements(By.CSS_SELECTOR, "a.deletelink")
    assert " UTC" in driver.find_element(By.CSS_SELECTOR, ".field-finished_at_utc").text
    shoot(driver, tmp_path, "4-job-dead-page")

    # and clicks Retry: the job runs again, and its second attempt succeeds
    driver.find_element(By.ID, "job-retry").click()
    wait_dom(driver, lambda d: "queued again" in d.find_element(By.CSS_SELECTOR, "ul.messagelist").text, 15, "the retry's message")
    done = wait_job(job.pk, "succeeded", 30)
    assert done.attempt == 2 and done.output == {"attempt": 2}
    driver.refresh()
    wait_dom(
        driver, lambda d: "succeeded" in d.find_element(By.CSS_SELECTOR, ".field-status").text.lower(), 15, "the job page saying succeeded"
    )
    assert not driver.find_elements(By.ID, "job-retry")
    shoot(driver, tmp_path, "5-job-succeeded-page")

    # and the operations page no longer lists it as dead
    driver.get(server.url("/admin/operations/"))
    wait_dom(driver, lambda d: d.find_elements(By.ID, "ops-dead"), 15, "the operations page")
    assert not driver.find_elements(By.CSS_SELECTOR, dead_row)
    shoot(driver, tmp_path, "6-operations-after-retry")

    issue_26_pages(driver, server, tmp_path, group_chain.pk)


def issue_26_pages(driver, server, tmp_path: Path, group_chain_id: int) -> None:
    """Issue 26: the pages an operator reads, at 1400 px, after real runs."""
    from selenium.webdriver.common.by import By

    # given a job that dies after two attempts, and a chain (a sleep, an echo, a group) whose
    # running first step is cancelled from its page
    dead, _ = enqueue_step(Step("examples.fail", {"times": 5}, retries=1))
    chain = start_chain([Step("examples.sleep", {"seconds": 20}), Step("examples.echo", {}),
                         Group([Step("examples.member", {"n": 0}), Step("examples.member", {"n": 1})])])
    wait_dom(driver, lambda d: step_status(d, chain.pk, 0) == "running", 20, f"chain {chain.pk}'s step 0 running")
    worker = driver.find_element(By.CSS_SELECTOR, "#ops-workers .ops-worker")
    assert "queues: default" in worker.text and "pool: prefork" in worker.text, worker.text
    shoot(driver, tmp_path, "7-operations-during-a-run")
    fits_the_width(driver, "the operations page during a run")
    first = Job.objects.get(chain=chain, chain_index=0)
    driver.get(server.url(f"/admin/jobs/job/{first.pk}/change/"))
    driver.find_element(By.ID, "job-cancel").click()
    wait_dom(driver, lambda d: "asked to stop" in d.find_element(By.CSS_SELECTOR, "ul.messagelist").text, 15, "the cancel's message")
    wait_chain(chain.pk, "cancelled", 20)
    wait_job(dead.pk, "dead", 20)
    # (and a finished chain with a group of 98, as rows: its members ran nowhere, nothing to wait for)
    big = Chain.objects.create(steps=[{"group": [{"type": "examples.member", "input": {"n": n}} for n in range(98)]}],
                               status="succeeded", finished_at=timezone.now())
    Job.objects.bulk_create([Job(type="examples.member", queue="default", chain=big, chain_index=0, member=n, status="succeeded",
                                 started_at=timezone.now(), finished_at=timezone.now()) for n in range(98)])

    # then the operations page: the chain's unreached steps say so, the cancel is counted, and the
    # worker, idle now, is still listed with its queues and pool
    driver.get(server.url("/admin/operations/"))
    wait_dom(driver, lambda d: step_status(d, chain.pk, 2) == "not reached", 15, f"chain {chain.pk}'s group not reached")
    assert step_status(driver, chain.pk, 1) == "not reached" and step_status(driver, chain.pk, 0) == "cancelled"
    summary = driver.find_element(By.CSS_SELECTOR, f'#operations [data-chain="{big.pk}"] details.ops-members')
    assert summary.get_attribute("open") is None and "the first 10 of 98 members" in summary.text, summary.text
    headers = [th.text.lower() for th in driver.find_elements(By.CSS_SELECTOR, "#ops-throughput th")]
    assert "cancelled" in headers and "p95 run time" in headers, headers
    wait_dom(driver, lambda d: "idle" in d.find_element(By.ID, "ops-workers").text, 15, "the idle worker listed")
    shoot(driver, tmp_path, "8-operations-after-a-cancel")
    fits_the_width(driver, "the operations page after a cancel")

    # and the dead job's page: two attempts, each with its worker, start, end and error
    driver.get(server.url(f"/admin/jobs/job/{dead.pk}/change/"))
    attempts = wait_dom(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "table.cv-attempts tr.cv-attempt"), 15, "the attempts")
    assert [(a.get_attribute("data-attempt"), a.get_attribute("data-outcome")) for a in attempts] == [("1", "failed"), ("2", "dead")]
    assert "failing attempt 1" in attempts[0].text and "failing attempt 2" in attempts[1].text and "@" in attempts[1].text
    assert "no run is due" in driver.find_element(By.CSS_SELECTOR, ".field-run_after_utc").text
    assert driver.find_element(By.CSS_SELECTOR, ".field-duration_text label").text.startswith("Ran for")
    shoot(driver, tmp_path, "9-job-attempt-history")
    fits_the_width(driver, "a dead job's page")

    # and the jobs list: every column on screen, one line a job, the dead job's last error
    driver.get(server.url("/admin/jobs/job/"))
    headers = [th.text.lower() for th in driver.find_elements(By.CSS_SELECTOR, "#result_list thead th")]
    for name in ("status", "attempts", "last error", "worker", "chain", "created (utc)", "finished (utc)"):
        assert name in headers, headers
    row = driver.find_element(By.CSS_SELECTOR, f'#result_list input[value="{dead.pk}"]').find_element(By.XPATH, "./ancestor::tr")
    assert "RuntimeError: examples.fail: failing attempt 2" in row.text and "Traceback" not in row.text
    heights = driver.execute_script("return Array.from(document.querySelectorAll('#result_list tbody tr')).map(r => r.offsetHeight)")
    assert max(heights) <= 40, heights
    shoot(driver, tmp_path, "10-jobs-list")
    fits_the_width(driver, "the jobs list")

    # and a chain's page with a group: every column on screen, a timestamp on one line
    driver.get(server.url(f"/admin/jobs/chain/{group_chain_id}/change/"))
    rows = wait_dom(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "table.chain-plan tbody tr"), 15, "the chain's steps")
    assert len(rows) == 6 and all(r.size["height"] <= 48 for r in rows), [r.size for r in rows]
    stamps = driver.execute_script("return Array.from(document.querySelectorAll('table.chain-plan time')).map(t => t.offsetHeight)")
    assert stamps and max(stamps) <= 20, stamps  # a timestamp on one line
    shoot(driver, tmp_path, "11-chain-page-with-a-group")
    fits_the_width(driver, "a chain's page with a group")

    # and the cancelled chain's page: its unreached steps and members say so
    driver.get(server.url(f"/admin/jobs/chain/{chain.pk}/change/"))
    # (waited for, as every other page here: a clean clone's run once read no row at once; on a
    # timeout the page's source is in the failure)
    rows = wait_dom(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "table.chain-plan tbody tr"), 15, "the cancelled chain's steps")
    statuses = [r.get_attribute("data-status") for r in rows]
    assert statuses == ["cancelled", "not reached", "not reached", "not reached", "not reached"], statuses
    shoot(driver, tmp_path, "12-chain-page-cancelled")
