"""Run the django.tasks backend's tests under Django 6.x (built-in `django.tasks`, Python 3.12+).

    python scripts/django6.py [pytest arguments]     # default: the backend's test modules
    python scripts/django6.py --build-only           # build (or keep) .venv-dj6 and stop: `make test`'s setup

Builds `.venv-dj6` (ignored by git) once: Python 3.12 (PYTHON312, `python3.12` on the PATH, or
pyenv's), the newest Django 6.x, and the project's other requirements, each at its pin when it
supports Django 6 and Python 3.12, else at the newest that does (pip decides: the pins are
constraints only where pip can meet them). The venv is rebuilt when requirements.txt or this
script changes (a stamp holds their hash). Exit 77 when no Python 3.12 exists (the caller skips,
saying so). The tests use the servers named by DATABASE_URL / REDIS_URL when set (the calling
test session's), else the embedded ones like any run.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-dj6"
STAMP = VENV / "conveyor-stamp"
DJANGO = "Django>=6.0,<7"
#: Not installed in the Django 6 venv: Django's pin (replaced), the backport (built in from 6.0),
#: and tools the backend's tests do not use.
LEFT_OUT = {"django", "django-tasks", "django-stubs-ext", "selenium", "schemathesis", "ruff", "flower", "honcho"}
#: The backend's tests (in process and with real workers), run by default.
TESTS = [
    "tests/integration/test_django_tasks.py",
    "tests/acceptance/test_django_tasks_live.py",
    "tests/acceptance/test_django_tasks_docs_live.py",
]


def python312() -> str | None:
    candidates = [os.environ.get("PYTHON312", "")]
    for home in ("~/.pyenv/versions", "/root/.pyenv/versions"):
        candidates += sorted(glob.glob(os.path.expanduser(f"{home}/3.12*/bin/python3.12")), reverse=True)
    candidates.append(shutil.which("python3.12") or "")  # a pyenv shim may name a version not selected: last
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] >= (3, 12))"],
                                   capture_output=True, text=True)
            if probe.returncode == 0 and probe.stdout.strip() == "True":
                return candidate
    return None


def requirements() -> list[str]:
    kept = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if not spec:
            continue
        name = spec.split("==")[0].split("[")[0].strip().lower()
        if name not in LEFT_OUT:
            kept.append(spec)
    return kept


def stamp() -> str:
    text = (ROOT / "requirements.txt").read_bytes() + Path(__file__).read_bytes()
    return hashlib.sha256(text).hexdigest()


def build(python: str) -> Path:
    pip = VENV / "bin" / "pip"
    if STAMP.exists() and STAMP.read_text() == stamp() and (VENV / "bin" / "python").exists():
        return VENV / "bin" / "python"
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(VENV)], check=True)
    quiet = ["--quiet", "--disable-pip-version-check"]
    pinned = requirements()
    try:  # every pin as it is, with Django 6
        subprocess.run([str(pip), "install", *quiet, DJANGO, *pinned], check=True)
    except subprocess.CalledProcessError:  # some pin refuses Django 6 or 3.12: let pip choose those
        loose = [spec.split("==")[0] for spec in pinned]
        print("django6: a pin does not install with Django 6 / Python 3.12; installing the newest that do", file=sys.stderr)
        subprocess.run([str(pip), "install", *quiet, DJANGO, *loose], check=True)
    STAMP.write_text(stamp())
    return VENV / "bin" / "python"


def main(argv: list[str]) -> int:
    build_only = argv[:1] == ["--build-only"]
    python = python312()
    if python is None:
        print("django6: no Python 3.12 (set PYTHON312, or put python3.12 on the PATH): Django 6 needs it", file=sys.stderr)
        # `make test`'s setup goes on: tests/acceptance/test_django6.py then skips, saying why
        return 0 if build_only else 77
    venv_python = build(python)
    if build_only:  # the build is `make test`'s setup step, not a part of the timed pytest run
        print(f"django6: {VENV.name} ready", flush=True)
        return 0
    version = subprocess.run([str(venv_python), "-c", "import django; print(django.get_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    print(f"django6: Django {version} on {python}", flush=True)
    args = argv or TESTS
    return subprocess.run([str(venv_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
