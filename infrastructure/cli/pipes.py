"""A reader that closes stdout early (`batchctl replay | head`) ends the command quietly.

Python ignores SIGPIPE, so a write to a pipe whose reader has gone raises
BrokenPipeError; click would turn that into exit 1, rich into exit 1, and the
interpreter's last flush into an "Exception ignored" line. For a command line
that streams results, the reader taking less than everything is not a failure:
``guard_stdout`` marks exactly that case (a write to *stdout* failing with
EPIPE) as ``StdoutClosed``, and the entry point then exits 0 in silence.
A broken pipe anywhere else (a socket, stderr) is left alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO, cast


class StdoutClosed(Exception):
    """The reader of stdout went away; there is nothing left to say."""


class _GuardedStdout:
    """Delegates to the real stdout; a broken pipe on write or flush is ``StdoutClosed``.

    Not an ``OSError``, so neither click nor rich takes it for their own handling.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError as e:
            raise StdoutClosed from e

    def writelines(self, lines: Iterable[str]) -> None:
        try:
            self._stream.writelines(lines)
        except BrokenPipeError as e:
            raise StdoutClosed from e

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError as e:
            raise StdoutClosed from e

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def guard_stdout() -> Iterator[None]:
    """While inside, a closed stdout raises ``StdoutClosed`` (see the module docstring)."""
    original = sys.stdout
    sys.stdout = cast(TextIO, _GuardedStdout(original))
    try:
        yield
    finally:
        sys.stdout = original


def discard_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's final flush of what is still
    buffered cannot fail (and print "Exception ignored ... BrokenPipeError")."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (a test's capture): nothing to protect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
