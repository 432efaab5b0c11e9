"""/api/docs in a real headless Chromium against a real server: Swagger UI renders the API's
operations from files the server serves itself (ninja's bundled copy), with no request leaving
the machine.

Chromium is Debian's `chromium` package: the session fixture installs it with apt-get when it is
missing and the tests run as root (a clean CI container), and skips otherwise, saying why.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import psutil
import pytest

from tests.support import http_get

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

def run_chromium(binary: str, url: str, *args: str, timeout: float = 60.0) -> tuple[str, list[str]]:
    """Load `url` in a headless Chromium that can resolve no host but 127.0.0.1; return the DOM
    after the page's JavaScript ran and every URL the page requested (from the browser's net log).

    Chromium runs in a session and process group of its own, with a profile of its own: on a
    timeout the whole group is killed, and no process of that profile may survive the call."""
    profile = tempfile.mkdtemp(prefix="cvchrome-", dir="/tmp")
    net_log = Path(profile) / "net-log.json"
    argv = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        # Any host but the loopback server fails to resolve: a CDN reference cannot load.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--log-net-log={net_log}", "--net-log-capture-mode=Default",
        "--virtual-time-budget=15000", "--dump-dom", *args, url,
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate(timeout=10)
            raise AssertionError(f"chromium did not finish loading {url} in {timeout}s (killed)") from None
        finally:
            _stop_profile_processes(profile)
        assert out.strip(), f"chromium printed no DOM for {url} (exit {process.returncode}):\n{err[-3000:]}"
        return out, page_requests(net_log, url)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _stop_profile_processes(profile: str) -> None:
    """Chromium's helpers (zygote, renderer, utility) outliving their browser: kill each by pid and
    fail, since none should survive."""
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(profile in part for part in proc.info["cmdline"] or []):
            left.append(proc)
    for proc in left:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=10)
    assert not left, f"chromium processes survived their browser: {[p.pid for p in left]}"


def page_requests(net_log: Path, page: str) -> list[str]:
    """The URLs the page at `page` asked for, from a Chromium net log: its navigation and every
    request the page initiated (the browser's own background requests are not the page's: their
    initiator is no origin)."""
    origin = "/".join(page.split("/", 3)[:3])
    text = net_log.read_text(errors="replace") if net_log.exists() else ""
    if not text.rstrip().endswith("}"):  # a log cut short by the browser's exit lacks its end
        text = text.rstrip().rstrip(",") + "]}"
    log = json.loads(text)
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log.get("events", []):
        params = event.get("params") or {}
        if event["type"] == start_job and (params.get("initiator") == origin or params.get("url") == page):
            urls.append(params["url"])
    return urls


class Operations(HTMLParser):
    """Swagger UI's rendered operation rows, as a reader sees them: the text of each
    `.opblock-summary`'s method, path and summary (tags and attributes aside)."""

    FIELDS = {"opblock-summary-method": "method", "opblock-summary-path": "path", "opblock-summary-description": "summary"}
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}  # no end tag

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self._open: list[str | None] = []  # per open element: the field it starts, if any

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if "opblock-summary" in classes:
            self.rows.append({"method": "", "path": "", "summary": ""})
        if tag not in self.VOID:
            self._open.append(next((self.FIELDS[c] for c in classes if c in self.FIELDS), None))

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        field = next((f for f in reversed(self._open) if f), None)
        if field and self.rows:
            self.rows[-1][field] += data.strip()


def rendered_operations(dom: str) -> set[tuple[str, str, str]]:
    parser = Operations()
    parser.feed(dom)
    return {(row["method"].upper(), row["path"], row["summary"]) for row in parser.rows}


@pytest.mark.timeout(900)  # the first run may install chromium (a download of ~100 MB) first
def test_api_docs_render_every_operation_from_local_files_only(live, chromium):
    # given a real server
    server = live.start(mode="server")
    base = server.url("")

    # when the page's HTML is read
    status, html = http_get(server.url("/api/docs"))
    assert status == 200
    html = html.decode()
    # then it loads its scripts, styles and icons from this server's /static/ only (ninja's copy)
    references = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert references, html
    assert all(ref.startswith("/static/") for ref in references), references
    for ref in references:
        assert http_get(server.url(ref))[0] == 200, ref
    assert "cdn" not in html.lower()

    # when Chromium, which can resolve no outside host, loads and runs the page
    dom, requested = run_chromium(chromium, server.url("/api/docs"))

    # then every request went to this server (nothing to a CDN or anywhere else)
    assert any(url.endswith("/static/ninja/swagger-ui-bundle.js") for url in requested), requested
    assert any(url.endswith("/api/openapi.json") for url in requested), requested
    outside = [url for url in requested if url.startswith(("http:", "https:", "ws:", "wss:")) and not url.startswith(base)]
    assert not outside, outside

    # and Swagger UI rendered every operation of the schema: method, path and summary
    status, body = http_get(server.url("/api/openapi.json"))
    assert status == 200
    schema = json.loads(body)
    expected = {
        (method.upper(), path, operation.get("summary", ""))
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    }
    assert ("POST", "/api/jobs", "Enqueue a job") in expected  # the README's first route
    shown = rendered_operations(dom)
    assert expected <= shown, f"missing from the page: {sorted(expected - shown)}\nshown: {sorted(shown)}"
    assert 'class="title"' in dom and "Conveyor" in dom
