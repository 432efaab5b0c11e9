"""The cluster split: counts and percentages of N, refused when they do not fit."""
from __future__ import annotations

import pytest

from project import roles
from project.roles import Split, SplitError


@pytest.mark.parametrize(
    ("cluster", "servers", "workers", "expected"),
    [
        (4, "25%", "75%", Split(servers=1, workers=3, shared=0)),
        (4, "1", "3", Split(servers=1, workers=3, shared=0)),
        (4, "1", "1", Split(servers=1, workers=1, shared=2)),
        (4, None, None, Split(servers=0, workers=0, shared=4)),
        (3, "10%", None, Split(servers=1, workers=0, shared=2)),  # above 0% means at least one
        (5, "50%", "50%", Split(servers=2, workers=2, shared=1)),  # rounded down
        (2, "0", "2", Split(servers=0, workers=2, shared=0)),
    ],
)
def test_split(cluster, servers, workers, expected):
    assert roles.split(cluster, servers, workers) == expected


@pytest.mark.parametrize(
    ("cluster", "servers", "workers", "message"),
    [
        (4, "3", "2", "more than --cluster 4"),
        (4, "-1", None, "must not be negative"),
        (4, "120%", None, "between 0% and 100%"),
        (0, None, None, "at least one instance"),
        (4, "0", "0", "both zero"),
        (4, "two", None, "expected a count"),
    ],
)
def test_split_refused(cluster, servers, workers, message):
    with pytest.raises(SplitError, match=message):
        roles.split(cluster, servers, workers)


def test_cluster_without_n_uses_the_cpus(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert roles.split(None, "1", None).total == 6


def test_modes_list_each_instance():
    assert Split(1, 2, 1).modes() == ["server", "worker", "worker", "shared"]
