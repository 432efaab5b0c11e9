"""An outside fuzzer against a real server: schemathesis (pinned in requirements.txt) reads
/api/openapi.json and sends what the schema allows and what it forbids, with every check on
(server errors, undocumented statuses and content types, schema-valid requests refused,
schema-violating ones accepted, response conformance, stateful links). It must find nothing.

The run is bounded in examples per operation and in time, and stopped by its pid if it overruns.
"""
from __future__ import annotations


import pytest

from tests.factories import api_token
from tests.support import run_schemathesis

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

#: Per operation, in the fuzzing and stateful phases (random, from SEED). The coverage phase,
#: ~2,500 of the ~2,900 cases, is schemathesis' deterministic set of boundary and invalid values
#: and is sent whatever this says. 40 added ~450 random cases (and ~25 s); the defects the fuzzer
#: found are cases of tests/integration/test_api_contract.py.
MAX_EXAMPLES = 15
SEED = 20261123
TIME_LIMIT = 240


def test_schemathesis_with_every_check_finds_nothing(live, tmp_path):
    # A `make run` instance as it comes (a server and a worker, every default): `?wait=` holds a
    # request until the job ends or the documented bound (8 s), under schemathesis' 10 s limit
    # on a response (ST112, and its request timeout): the fuzzer's waits cannot time it out.
    live.grace = 3  # the fuzzer's jobs (sleeps among them) need no drain at the end: 20 s saved
    # The live streams (text/event-stream) answer until their job or chain ends, up to
    # CONVEYOR_STREAM_MAX_SECONDS (300 by default; then the client resumes with Last-Event-ID):
    # bounded at 1 s here (its least), a stream of a job that never ends (examples.hang) is read whole within
    # the fuzzer's 10 s, and the streams are fuzzed like every other route.
    server = live.start("--no-beat", mode="shared", name="fuzzed", env={"CONVEYOR_STREAM_MAX_SECONDS": "1"})
    run = run_schemathesis(
        server.url("/api/openapi.json"), tmp_path, "--header", f"Authorization: Bearer {api_token()}",
        seed=SEED, max_examples=MAX_EXAMPLES, time_limit=TIME_LIMIT,
    )
    # and it really exercised the API: every operation, thousands of cases
    # /api/jobs/{id}/results, queues' and pauses' six, the scale signal, the three streams (job, chain, event)
    assert run.tested == 23, run.output[-2000:]
    assert run.generated >= 2000, run.output[-2000:]
