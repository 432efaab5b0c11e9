"""Schemathesis, every check, against the second document: /auth/openapi.json (POST /auth/token).
Valid and invalid bodies, wrong credentials and, once the per-IP limit is reached, 429s: every
answer must be one the document names, in the shape it names."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

TIME_LIMIT = 180


def test_schemathesis_on_the_auth_document_finds_nothing(live, tmp_path):
    server = live.start("--no-beat", mode="server", name="fuzzed-auth")
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", server.url("/auth/openapi.json"),
        "--checks", "all", "--max-examples", "60", "--seed", "20261123", "--no-color",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "HOME": str(tmp_path)}
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
    tested = next(line for line in output.splitlines() if line.strip().startswith("Tested:"))
    assert tested.split()[-1] == "1", tested
    generated = next(line for line in output.splitlines() if " generated" in line)
    assert int(generated.split()[0]) >= 100, generated  # far past the limit of 10 a minute: 429s too
