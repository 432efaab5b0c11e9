"""The stated size limits of a job's input and output (CONVEYOR_MAX_INPUT_BYTES,
CONVEYOR_MAX_OUTPUT_BYTES, 1 MiB each by default) and of an HTTP body (1 MiB), on the session's
real PostgreSQL and Redis: an input over its limit is refused naming the field (HTTP: 413), an
output over its limit is a failed attempt saying so, a body over 1 MiB a JSON 413."""
from __future__ import annotations

import pytest

from jobs import Group, InputTooLarge, InvalidJob, Step, enqueue, start_chain
from jobs.engine import runner
from jobs.models import Chain, Job, Status
from tests.integration.conftest import RUNNER_IN_PROCESS

pytestmark = RUNNER_IN_PROCESS


@pytest.fixture
def limits(settings):
    """Inputs and outputs up to 1000 bytes of JSON."""
    settings.CONVEYOR = {**settings.CONVEYOR, "MAX_INPUT_BYTES": 1000, "MAX_OUTPUT_BYTES": 1000}


def test_the_limits_are_one_mib_by_default(settings):
    assert (settings.CONVEYOR["MAX_INPUT_BYTES"], settings.CONVEYOR["MAX_OUTPUT_BYTES"]) == (1024 * 1024, 1024 * 1024)


def test_an_input_over_the_limit_is_refused_in_python_naming_the_field(limits):
    enqueue("examples.echo", {"pad": "x" * 900})  # under it
    with pytest.raises(InputTooLarge) as caught:
        enqueue("examples.echo", {"pad": "x" * 1000})
    assert isinstance(caught.value, InvalidJob) and "CONVEYOR_MAX_INPUT_BYTES" in str(caught.value)
    assert list(caught.value.errors) == ["input"]
    with pytest.raises(InputTooLarge) as caught:
        start_chain([Step("examples.echo"), Group([Step("examples.echo"), Step("examples.echo", {"pad": "x" * 1000})])])
    assert list(caught.value.errors) == ["steps.1.group.1.input"]
    assert Job.objects.count() == 1 and Chain.objects.count() == 0


def test_an_input_over_the_limit_is_413_over_http_naming_the_field(api, limits):
    status, body = api("post", "/jobs", {"type": "examples.echo", "input": {"pad": "x" * 1000}})
    assert status == 413 and "1000 (CONVEYOR_MAX_INPUT_BYTES)" in body["fields"]["input"], body
    status, body = api("post", "/chains", {"steps": [
        {"type": "examples.echo"}, {"group": [{"type": "examples.echo"}, {"type": "examples.echo", "input": {"pad": "x" * 1000}}]},
    ]})
    assert status == 413 and list(body["fields"]) == ["steps.1.group.1.input"], body
    assert Job.objects.count() == 0 and Chain.objects.count() == 0


def test_a_body_over_one_mib_is_a_json_413(api):
    status, body = api("post", "/chains", {"steps": [{"group": [{"type": "examples.echo", "input": {"pad": "x" * 4000}}] * 300}]})
    assert status == 413 and "1 MiB" in body["detail"]
    assert Chain.objects.count() == 0


def test_an_output_over_the_limit_is_a_failed_attempt_saying_so(settings):
    settings.CONVEYOR = {**settings.CONVEYOR, "MAX_OUTPUT_BYTES": 500}
    job = enqueue("examples.echo", {"pad": "x" * 600}, retries=0)
    assert runner.execute(job.pk, worker="node@test/1") == Status.DEAD
    job.refresh_from_db()
    assert job.output is None
    assert "output is 611 bytes of JSON, over the limit of 500 (CONVEYOR_MAX_OUTPUT_BYTES)" in job.error
