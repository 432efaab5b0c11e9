"""The commands of each process of a deployment, written once.

The Dockerfile's CMD, compose.yaml's `command:` entries, the Procfile and the production
acceptance test (tests/acceptance/test_real_servers.py) all run these; tests/unit/test_deploy_commands.py
fails when one of them says something else. `python` is the image's (the test runs its own).
"""
from __future__ import annotations

import shlex

# One-shot, before a new version serves: the schema, then the schedules declared in code, under
# an advisory lock (two replicas releasing at once both succeed, and migrate once).
RELEASE: list[list[str]] = [["python", "manage.py", "release"]]
# Long-running roles: argv, and the environment that picks the role.
WEB = ["python", "manage.py", "start", "--no-beat"]
WEB_ENV = {"WORKER_MODE": "server"}
WORKER = ["python", "manage.py", "start"]
WORKER_ENV = {"WORKER_MODE": "worker"}
BEAT = ["python", "-m", "celery", "-A", "project", "beat", "--loglevel", "INFO"]
FLOWER = ["python", "manage.py", "flower"]
# The image's default: `manage.py start` in the WORKER_MODE of its environment.
IMAGE_CMD = ["python", "manage.py", "start"]


def shell(commands: list[list[str]]) -> str:
    """Several commands as one `sh -c` line, each only if the previous succeeded."""
    return " && ".join(shlex.join(argv) for argv in commands)
