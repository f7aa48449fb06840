"""The follower leases' settings: from the environment, validated once."""

from __future__ import annotations

import pytest

from infrastructure.postgres.lease import lease_key, peers_key
from infrastructure.settings import SettingsError, load_settings


def test_defaults_and_the_environment() -> None:
    s = load_settings({})
    assert (s.lease_ttl_seconds, s.lease_retry_seconds) == (5.0, 1.0)
    s = load_settings({"LEASE_TTL_SECONDS": "3", "LEASE_RETRY_SECONDS": "0.5"})
    assert (s.lease_ttl_seconds, s.lease_retry_seconds) == (3.0, 0.5)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"LEASE_TTL_SECONDS": "0.5"}, "LEASE_TTL_SECONDS"),
        ({"LEASE_TTL_SECONDS": "nope"}, "LEASE_TTL_SECONDS"),
        ({"LEASE_RETRY_SECONDS": "0"}, "LEASE_RETRY_SECONDS"),
        # A renewal must fit in the half TTL a holder trusts its last confirmation for.
        ({"LEASE_TTL_SECONDS": "2", "LEASE_RETRY_SECONDS": "1"}, "LEASE_RETRY_SECONDS"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=f"^{variable}:"):
        load_settings(env)


def test_lease_keys_are_per_schema_and_follower_and_fit_an_int4() -> None:
    keys = {lease_key(schema, f) for schema in ("a", "b") for f in ("outbox", "projector")}
    assert len(keys) == 4
    assert all(-(2**31) <= k < 2**31 for k in keys)
    assert lease_key("a", "outbox") == lease_key("a", "outbox")  # stable across processes
    assert peers_key("a", ["outbox", "projector"]) == peers_key("a", ["projector", "outbox"])
    assert peers_key("a", ["outbox"]) != peers_key("a", ["outbox", "projector"])
