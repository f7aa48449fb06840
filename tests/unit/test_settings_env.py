"""Every setting comes from the variable of its own name, and every variable is documented."""

from __future__ import annotations

import re
from pathlib import Path

from infrastructure.settings import _ENV, Settings, load_settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_each_variable_is_its_field_upper_cased_and_sets_it() -> None:
    assert all(var == field.upper() for var, field in _ENV.items())
    assert "DATABASE_POOL_SIZE" in _ENV and "WIRE_PROFILE" in _ENV
    s = load_settings({"DATABASE_POOL_SIZE": "7", "SWEEP_INTERVAL_SECONDS": "2.5"})
    assert (s.database_pool_size, s.sweep_interval_seconds) == (7, 2.5)


def test_every_variable_is_in_the_configuration_table() -> None:
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", DOCS.read_text()))
    missing = sorted(set(_ENV) - documented)
    assert missing == [], f"not in docs/configuration.md: {missing}"
    assert set(_ENV.values()) < set(Settings.model_fields)
