"""The image, compose.yaml and the Procfile run exactly the commands the production acceptance test
runs (tests/acceptance/test_real_servers.py): one definition, deploy/commands.py, so they cannot
drift. Docker does not run here; its files are parsed."""
from __future__ import annotations

import json
import re
import shlex

import yaml

from deploy import commands
from tests.support import ROOT


def dockerfile_final_stage() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile's last stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    instructions = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]


def procfile() -> dict[str, str]:
    return dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ":" in line)


def test_the_image_runs_manage_py_start_as_a_non_root_user_in_its_worker_mode():
    stage = dockerfile_final_stage()
    cmds = [json.loads(args) for name, args in stage if name == "CMD"]
    assert cmds == [commands.IMAGE_CMD]  # exec form, once
    assert not [name for name, _ in stage if name == "ENTRYPOINT"]
    assert stage[0][1].split()[0] == "python:3.11-slim"
    user = [args for name, args in stage if name == "USER"]
    assert user and user[-1] not in ("root", "0")
    env = " ".join(args for name, args in stage if name == "ENV")
    assert "WORKER_MODE=" in env and "CONVEYOR_ENV=production" in env
    # static files are collected at build (whitenoise serves them)
    assert "collectstatic" in (ROOT / "Dockerfile").read_text()


def test_compose_runs_the_commands_of_the_acceptance_test():
    services = compose()
    assert {"postgres", "redis", "release", "web", "worker", "beat", "flower"} <= set(services)
    assert services["release"]["command"] == ["sh", "-c", commands.shell(commands.RELEASE)]
    assert services["web"]["command"] == commands.WEB
    assert services["worker"]["command"] == commands.WORKER
    assert services["beat"]["command"] == commands.BEAT
    assert services["flower"]["command"] == commands.FLOWER
    for name, env in (("web", commands.WEB_ENV), ("worker", commands.WORKER_ENV)):
        assert {k: services[name]["environment"][k] for k in env} == env, name
    # every Conveyor service is the one image, in production, after the release step
    for name in ("web", "worker", "beat", "flower"):
        assert services[name]["build"] == "." and services[name]["environment"]["CONVEYOR_ENV"] == "production"
        assert services[name]["depends_on"]["release"]["condition"] == "service_completed_successfully"
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    assert all(port.startswith("127.0.0.1:") for port in services["flower"]["ports"])


def test_the_procfile_runs_the_same_commands():
    lines = procfile()
    assert lines["release"].strip() == commands.shell(commands.RELEASE)
    assert shlex.split(lines["web"]) == [*(f"{k}={v}" for k, v in commands.WEB_ENV.items()), *commands.WEB]
    assert shlex.split(lines["worker"]) == [*(f"{k}={v}" for k, v in commands.WORKER_ENV.items()), *commands.WORKER]
    assert shlex.split(lines["beat"]) == commands.BEAT
    assert shlex.split(lines["flower"]) == commands.FLOWER


def test_the_production_acceptance_test_runs_these_commands():
    source = (ROOT / "tests" / "acceptance" / "test_real_servers.py").read_text()
    for name in ("commands.RELEASE", "commands.WEB", "commands.WEB_ENV", "commands.WORKER", "commands.WORKER_ENV"):
        assert name in source, name


def test_the_release_step_is_manage_py_release_once_that_command_exists():
    if (ROOT / "project" / "management" / "commands" / "release.py").exists():
        assert commands.RELEASE == [["python", "manage.py", "release"]], "switch deploy/commands.py, compose.yaml and the Procfile"
    else:
        assert commands.RELEASE == [["python", "manage.py", "migrate", "--no-input"], ["python", "manage.py", "sync_schedules"]]
