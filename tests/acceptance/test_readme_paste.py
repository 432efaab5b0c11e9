"""The README's first minutes, pasted (issue 26): the block marked `<!-- readme-paste: ... -->` is
fed to a shell whole, in order, as a paste is (bash reads its input line by line: a command that
reads stdin, as a password prompt did, takes the lines after it, and they never run), against a
platform started by `manage.py start` on a free loopback port. Each command's answer is checked:
the README's comments are the specification (`# 403: this route needs ...` expects an error whose
detail says that; a request without one expects no error)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

MARK = "<!-- readme-paste:"
DONE = "@@readme-paste-done@@"  # printed after each command, with its exit status
EXPECTED_ERROR = re.compile(r"#\s*(4\d\d):\s*(.+)$")


def pasted_blocks(readme: str) -> list[str]:
    """The fenced blocks that follow a readme-paste marker, in order."""
    return [m[1] for m in re.finditer(re.escape(MARK) + r".*?-->\s*```\w*\n(.*?)```", readme, re.DOTALL)]


def commands(block: str) -> list[str]:
    """The block's commands: lines joined over a trailing backslash, blank lines left out."""
    joined = re.sub(r"\\\n", " ", block)
    return [line for line in joined.splitlines() if line.strip()]


def check(command: str, status: int, answer: str) -> None:
    """One command's answer, as the README says it should be."""
    assert status == 0, f"{command!r} exited {status}: {answer}"
    if command.startswith("curl"):
        body = json.loads(answer)  # every answer is JSON, indented or not
        expected = EXPECTED_ERROR.search(command)
        if expected:
            assert isinstance(body, dict) and body["detail"].startswith(expected[2].strip()), (command, body)
        else:
            assert not (isinstance(body, dict) and "detail" in body), (command, body)
    elif "manage.py user" in command:
        assert answer.startswith("created user you@example.com: superuser"), answer
    else:  # an assignment: quiet
        assert answer == "", (command, answer)


@pytest.mark.skipif(not shutil.which("curl"), reason="the README's block uses curl, which is not installed")
def test_the_readmes_first_block_pasted_whole_answers_as_each_line_says(live):
    # given the platform as `make run` starts it (shared: HTTP and a worker; no beat, no answer here
    # needs it; one web process: fewer to boot) on a free port
    server = live.start("--no-beat", "--web-concurrency", "1", name="readme")
    [block, *_] = pasted_blocks((ROOT / "README.md").read_text())
    block = block.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
    if not (ROOT / ".venv" / "bin" / "python").exists():  # a checkout tested by another Python
        block = block.replace(".venv/bin/python", sys.executable)
    lines = commands(block)
    assert len(lines) >= 10 and "manage.py user" in lines[1], lines

    # and its start-up says where it listens and how to make a login, with no password on the line
    log = server.log()
    assert f"Listening at: http://127.0.0.1:{server.port} (" in log, log[:3000]
    [hint] = [line for line in log.splitlines() if line.startswith("conveyor: admin ")]
    assert "manage.py user --email you@example.com --superuser (asks for the password)" in hint and "--password" not in hint
    assert ".venv/bin/python manage.py" in hint or sys.executable in hint, hint

    # when it is pasted whole into a shell (each command followed by a marker with its status)
    paste = "".join(f"{line}\necho; echo {DONE} $?\n" for line in lines)
    env = {k: v for k, v in live.env().items() if k != "CONVEYOR_USER_PASSWORD"}
    # (a session of its own: no controlling terminal for a prompt to open and wait on)
    shell = subprocess.run(["bash", "--noprofile", "--norc"], input=paste, cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120, start_new_session=True)

    # then every command ran, in order, and answered as the README says
    parts = shell.stdout.split(DONE)
    assert len(parts) == len(lines) + 1, f"{len(parts) - 1} of {len(lines)} commands ran:\n{shell.stdout}\n{shell.stderr}"
    # (each part after the first begins with the previous command's status line)
    statuses = [int(part.split("\n", 1)[0]) for part in parts[1:]]
    answers = [parts[0], *(part.split("\n", 1)[1] for part in parts[1:-1])]
    for line, status, answer in zip(lines, statuses, answers, strict=True):
        check(line, status, answer.strip())
