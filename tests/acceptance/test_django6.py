"""The django.tasks backend under Django 6.x, from `make test`: scripts/django6.py builds (once;
`make test` does it before pytest starts: `scripts/django6.py --build-only`) .venv-dj6 with
Python 3.12 and the newest Django 6 the requirements allow, then runs the backend's
in-process tests and the Django docs' examples on a real worker there, on Django's built-in
`django.tasks`. The child session starts its own embedded servers (its test database cannot
collide with this session's)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: A run that must build the venv first (pytest without `make`) takes a few minutes; later runs about 25 s.
BOUND_SECONDS = 900
LEAN = [
    "tests/integration/test_django_tasks.py",
    "tests/acceptance/test_django_tasks_docs_live.py",
]

pytestmark = [pytest.mark.live, pytest.mark.timeout(BOUND_SECONDS + 60)]


def test_the_backend_passes_its_tests_under_django_6():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import django6
    finally:
        sys.path.pop(0)
    if django6.python312() is None:
        pytest.skip("no Python 3.12 here (PYTHON312, python3.12 on the PATH, or pyenv's): Django 6 needs it")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CONVEYOR_DATA", "PYTEST_XDIST_WORKER",
                                                             "PYTEST_XDIST_WORKER_COUNT", "PYTEST_CURRENT_TEST")}
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "django6.py"), *LEAN], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=BOUND_SECONDS)
    out = "\n".join(line for line in (run.stdout + run.stderr).splitlines() if not line.startswith("WARNING: Location"))
    assert run.returncode == 0, out[-6000:]
    assert "django6: Django 6." in out and " passed" in out, out[-3000:]
