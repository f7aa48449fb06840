"""The lag checks of /readyz, on the follower's leader and on a standby."""

from __future__ import annotations

import pytest

from infrastructure.health.checks import LagTooHigh, lag_probe


def test_the_leader_fails_above_the_limit() -> None:
    probe = lag_probe(lambda: 500, lambda: 100, 300)
    with pytest.raises(LagTooHigh, match="400 events behind"):
        probe()
    assert lag_probe(lambda: 500, lambda: 300, 300)() == "200 events behind"


def test_a_standby_reports_the_shared_lag_and_never_fails_on_it() -> None:
    """Its follower runs on another replica: catching up is the leader's job, and taking
    the standby out of service would not make it faster."""
    leading = False
    probe = lag_probe(lambda: 50_000, lambda: 0, 300, lambda: leading)
    assert probe() == "standing by (led by another instance), 50000 events behind"
    leading = True  # it took the lease over: its own lag counts again
    with pytest.raises(LagTooHigh):
        probe()
