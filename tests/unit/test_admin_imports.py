"""The admin modules load during Django's setup, before the job types register: they must not
import jobs.interfaces.http then (it builds the API's request schemas from the registry when imported)."""
from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT

PROBE = """
import django
django.setup()
from jobs.interfaces import http
assert "EnqueueExamplesEcho" in repr(http.EnqueueIn), repr(http.EnqueueIn)[:500]
print("ok")
"""


def test_api_request_schemas_know_every_public_type_after_setup():
    env = {"DJANGO_SETTINGS_MODULE": "project.settings", "PATH": "/usr/bin:/bin", "CONVEYOR_DEMO": "true"}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
