"""Fixtures shared by the integration tests of the Redis read model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infrastructure.redis.view import RedisSlotView
from infrastructure.settings import Settings


@pytest.fixture
def view(test_settings: Settings) -> Iterator[RedisSlotView]:
    v = RedisSlotView.from_settings(test_settings)
    yield v
    v.close()
