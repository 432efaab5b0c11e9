"""The layers as a test: import-linter's contracts in pyproject.toml ([tool.importlinter]).

Beside test_import_graph.py (no cycles): these say which way the imports go. The engine never
imports an interface (HTTP, admin, operations page, Celery tasks) nor the event bus; `api` imports
neither `jobs` nor `subscribers` (project/api.py assembles the NinjaAPI); the decisions import no
Django; nothing but the tests imports `tests` (the hosts harness is the package `hosts/`)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_import_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "7 kept" in done.stdout, done.stdout[-2000:]
