"""A browser's EventSource follows a chain to its end: the JavaScript of docs/streams.md, as the
page has it, in a real headless Chromium (Debian's, driven by selenium) against a real server and
worker (`manage.py start`, shared mode). The browser fixture is the operations page test's."""
from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model

from api.auth import mint_jwt
from jobs import Step, start_chain
from tests.acceptance.test_operations_browser import browser, step_status, wait_dom  # noqa: F401 - the fixture
from tests.support import ROOT

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]


def _page_javascript() -> list[str]:
    """The ```js blocks of docs/streams.md, in order."""
    text = (ROOT / "docs" / "streams.md").read_text()
    blocks = re.findall(r"```js\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2, "docs/streams.md should show followChain and its use"
    return blocks


@pytest.mark.timeout(900)  # the first run may install chromium and chromium-driver first
def test_a_browsers_event_source_follows_a_chain_to_its_end_with_the_documented_javascript(live, browser):  # noqa: F811
    driver = browser
    live.grace = 3  # nothing to drain at the end
    # given a server and a worker, a page of the same origin, and a short-lived jobs:read JWT
    server = live.start("--no-beat", mode="shared", name="browsed")
    user = get_user_model().objects.create_user("viewer", "viewer@example.com", is_staff=True, is_superuser=True)
    token, _ = mint_jwt(user, "jobs:read")
    driver.get(server.url("/health/live"))
    driver.execute_script("document.body.innerHTML = '<pre id=\"steps\"></pre>';")

    # when a chain starts and the page follows it with the documented JavaScript
    chain = start_chain([Step("examples.sleep", {"seconds": 1}), Step("examples.echo", {"from": "browser"})])
    driver.execute_script(f"var chainId = {chain.pk}, token = {token!r};\n" + "\n".join(_page_javascript()))

    # then the page shows the first step running, then the chain's end with its output
    steps = lambda d: d.find_element("id", "steps").text  # noqa: E731
    wait_dom(driver, lambda d: "0 examples.sleep: running (attempt 1" in steps(d), 20, "step 0 running")
    wait_dom(driver, lambda d: "chain succeeded" in steps(d), 30, "the chain's end")
    shown = steps(driver)
    assert "0 examples.sleep: succeeded (attempt 1, 100%)" in shown, shown
    assert "1 examples.echo: succeeded (attempt 1, 100%)" in shown, shown
    assert 'chain succeeded: {"from":"browser"}' in shown, shown

    # and the operations page, open in the same browser, refreshes from its own stream: a new
    # chain shows within a second or two, while its 2 s timer is off (live) and the 30 s one far
    from django.test import Client

    staff = Client()
    staff.force_login(user)
    driver.add_cookie({"name": "sessionid", "value": staff.cookies["sessionid"].value, "path": "/"})
    driver.get(server.url("/admin/operations/"))
    status = lambda d: d.find_element("id", "operations-status").text  # noqa: E731
    wait_dom(driver, lambda d: status(d).startswith("Live"), 15, "the operations page's stream to be live")
    later = start_chain([Step("examples.echo", {"first": True}), Step("examples.echo", {"again": True})])
    wait_dom(driver, lambda d: step_status(d, later.pk, 1) == "succeeded", 20, f"chain {later.pk} done on the page")
