"""The commands Conveyor's own output tells a person to run, written as they can paste them.

`manage.py start` prints how to make a login and a token, and names the release step when
migrations are pending: with the Python that runs it (`.venv/bin/python` after `make run`, not a
`python` that may be another one, or none), and never with a password on the command line.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def python_command(executable: str | None = None, cwd: str | None = None, on_path: str | None = "") -> str:
    """This Python as a person would type it from `cwd`: relative when it lives below it
    (`.venv/bin/python`), `python` when that name on PATH is this one (an image), else its path.

    `on_path`: what `python` resolves to on PATH (looked up when not given; None: nothing)."""
    executable = executable or sys.executable or "python"
    cwd = cwd or os.getcwd()
    exe = Path(os.path.abspath(executable))  # not resolved: .venv may be a symlink
    try:
        return str(exe.relative_to(os.path.abspath(cwd)))
    except ValueError:
        pass
    if on_path == "":
        on_path = shutil.which("python")
    if on_path and os.path.realpath(on_path) == os.path.realpath(exe):
        return "python"
    return str(exe)


def login_hint(python: str) -> str:
    """How to make an admin login and an API token; the password is asked (or read from
    CONVEYOR_USER_PASSWORD / --password-stdin), never written on the command line."""
    return (
        f"make a login: {python} manage.py user --email you@example.com --superuser (asks for the password); "
        f"an API token: {python} manage.py token --email you@example.com"
    )
