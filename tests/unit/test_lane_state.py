"""subscribers.delivery.lane_state: what an emit (or cleanup) does with a key's lane, from what it
read under the key's lock (no server)."""
from __future__ import annotations

import pytest

from subscribers.delivery import lane_state


@pytest.mark.parametrize("status", ["pending", "running", "failed"])
def test_a_lane_whose_holder_has_not_ended_is_held(status: str) -> None:
    assert lane_state(7, status, waiting=False) == "held"
    assert lane_state(7, status, waiting=True) == "held"


def test_no_lane_and_nothing_waiting_is_free() -> None:
    assert lane_state(None, None, waiting=False) == "free"


@pytest.mark.parametrize("status", ["succeeded", "dead", "cancelled"])
def test_a_lane_whose_holder_ended_without_handing_it_on_is_stuck(status: str) -> None:
    assert lane_state(7, status, waiting=False) == "stuck"


def test_a_lane_whose_holder_row_is_gone_is_stuck() -> None:
    assert lane_state(7, None, waiting=False) == "stuck"


def test_deliveries_waiting_with_no_lane_are_stuck() -> None:
    assert lane_state(None, None, waiting=True) == "stuck"
