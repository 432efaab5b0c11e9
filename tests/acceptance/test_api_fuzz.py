"""An outside fuzzer against a real server: schemathesis (pinned in requirements.txt) reads
/api/openapi.json and sends what the schema allows and what it forbids, with every check on
(server errors, undocumented statuses and content types, schema-valid requests refused,
schema-violating ones accepted, response conformance, stateful links). It must find nothing.

The run is bounded in examples per operation and in time, and stopped by its pid if it overruns.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.factories import api_token

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

MAX_EXAMPLES = 40
SEED = 20261123
TIME_LIMIT = 240


def test_schemathesis_with_every_check_finds_nothing(live, tmp_path):
    server = live.start("--no-beat", mode="server", name="fuzzed")
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", server.url("/api/openapi.json"),
        "--header", f"Authorization: Bearer {api_token()}",
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--no-color",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "HOME": str(tmp_path)}  # no user config
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=TIME_LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"schemathesis ran past {TIME_LIMIT}s:\n{output[-4000:]}")
    assert process.returncode == 0, output[-8000:]
    assert "No issues found" in output, output[-4000:]
    # and it really exercised the API: every operation, hundreds of cases
    tested = next(line for line in output.splitlines() if line.strip().startswith("Tested:"))
    assert tested.split()[-1] == "12", tested
    generated = next(line for line in output.splitlines() if " generated" in line)
    assert int(generated.split()[0]) >= 300, generated
