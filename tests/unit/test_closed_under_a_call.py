"""A connection closed under a read (the stall watchdog's recycle) is a passing failure.

The watchdog closes a part's connections from another thread to free a call
blocked on a silent server; the reading thread then gets EBADF or redis-py's
"I/O operation on closed file" from inside the client library. That is the
dependency's trouble, retried; the same error raised by our own code is not.
"""

from __future__ import annotations

import errno

import pytest

from infrastructure.transient import closed_under_a_call, is_transient


def raised_in(module: str, error: BaseException) -> BaseException:
    """``error`` as raised by code of ``module`` (its frame's ``__name__``)."""
    scope = {"__name__": module, "error": error}
    try:
        exec("def read():\n    raise error\nread()", scope)
    except BaseException as e:
        return e
    raise AssertionError("not raised")


@pytest.mark.parametrize(
    "error",
    [ValueError("I/O operation on closed file."), OSError(errno.EBADF, "Bad file descriptor")],
)
def test_a_client_reading_a_closed_connection_is_transient(error: BaseException) -> None:
    assert closed_under_a_call(raised_in("redis._parsers.socket", error))
    assert is_transient(raised_in("psycopg.connection", error))


@pytest.mark.parametrize(
    "error",
    [ValueError("I/O operation on closed file."), OSError(errno.EBADF, "Bad file descriptor")],
)
def test_the_same_error_from_our_own_code_is_not(error: BaseException) -> None:
    assert not is_transient(raised_in("infrastructure.processes.projector", error))


def test_another_value_error_in_a_client_is_not() -> None:
    assert not is_transient(raised_in("redis.client", ValueError("invalid literal")))
