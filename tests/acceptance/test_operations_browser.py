"""The admin's operations page in a real headless Chromium, driven by selenium through Debian's
chromedriver, against a real server and worker (`manage.py start`, shared mode): a staff user
logs in, watches a chain's steps appear and finish on the self-refreshing page, and retries a
dead job from its page until it succeeds.

Chromium and chromedriver are Debian's `chromium` and `chromium-driver` packages: the session
fixtures install them with apt-get when missing and the tests run as root, and skip otherwise,
saying why. chromedriver (and the Chromium it starts) runs in a process group of its own, killed
as a group when the test ends; no process of the test's browser profile may survive it.
Screenshots go to the test's tmp dir and are copied to /tmp/conveyor-screens/.
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

from jobs.engine.creation import Group, Step, enqueue_step, start_chain
from tests.support import wait_chain, wait_job

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

SCREENS = Path("/tmp/conveyor-screens")
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
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        "--no-first-run", "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--window-size=1400,1800", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
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
    return path


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

    # when the user logs in through the admin's form
    driver.get(server.url("/admin/login/?next=/admin/"))
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
    assert rows[1].text.rstrip().endswith(" s") and "UTC" in rows[1].text, rows[1].text
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

    # when two jobs die (one attempt each, failing it)
    job, _ = enqueue_step(Step("examples.fail", {"times": 1}, retries=0))
    other, _ = enqueue_step(Step("examples.fail", {"times": 1}, retries=0))
    wait_job(job.pk, "dead", 30)
    wait_job(other.pk, "dead", 30)

    # then the operations page lists it with a retry button
    dead_row = f'#ops-dead tr[data-job="{job.pk}"]'
    wait_dom(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"{dead_row} button.ops-retry"), 10, f"dead job {job.pk}'s row")
    assert "RuntimeError: examples.fail: failing attempt 1" in driver.find_element(By.CSS_SELECTOR, dead_row).text
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
