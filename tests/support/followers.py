"""The followers of the store (projector, outbox) as tests run them, built by a container.

Production builds every follower in ``infrastructure/bootstrap.py`` and runs it
on the runtime's event loop (``infrastructure/processes/runtime.py``); a test
wants one in the background while it writes and reads:

- ``ProjectorThread(settings, service=..., view=..., **options)``: a projector
  built by a container of its own (what is not given is built by it, and
  closed with it by ``stop()``), run in a daemon thread with a stop event;
  ``wait_for(position)`` blocks until the view holds ``position`` and raises
  the error that ended the thread, if one did.
- ``project_until(settings, stop)`` / ``publish_until(settings, stop)``: a
  container's projector or outbox run in this thread until ``stop`` is set.
- ``outbox_of(settings, service, **options)``: an outbox on ``service``'s store,
  its tables created first (under the DDL lock), as the container does for a
  long-running process.
- ``rebuilt(settings, ...)``: a read-model rebuild with a container's service
  and view.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from application.service import BatchService
from infrastructure.bootstrap import Bootstrap
from infrastructure.postgres.store import ddl_lock
from infrastructure.processes.follower import run_blocking
from infrastructure.processes.outbox import Outbox, create_outbox_tables
from infrastructure.redis.rebuild import Progress, RebuildSummary, rebuild
from infrastructure.redis.view import RedisSlotView
from infrastructure.settings import Settings

log = logging.getLogger(__name__)


class FollowerThread:
    """``run(stop)`` in a daemon thread until ``stop()``; keeps the error that ended it."""

    def __init__(
        self,
        run: Callable[[threading.Event], None],
        name: str,
        close: Callable[[], None] = lambda: None,
    ) -> None:
        self._run, self._close = run, close
        self._stop, self.dead = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.error: BaseException | None = None

    def start(self) -> FollowerThread:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Set the stop event, wait for the thread, then close what was built for it."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        self._close()

    def _main(self) -> None:
        try:
            self._run(self._stop)
        except BaseException as error:
            self.error = error
            log.exception("%s stopped by an error", self._thread.name)
        finally:
            self.dead.set()


class ProjectorThread(FollowerThread):
    """A container's projector (``options`` as ``Bootstrap.projector``) in a thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        service: BatchService | None = None,
        view: RedisSlotView | None = None,
        **options: Any,
    ) -> None:
        # Given objects are the caller's; missing ones come from (and go with) the container.
        container = Bootstrap(settings, service=service, view=view)
        self.projector = container.projector(**options)
        super().__init__(self.projector.run, "slot-projector", container.close)

    def start(self) -> ProjectorThread:
        super().start()
        return self

    def wait_for(self, position: int | None, timeout: float = 5.0) -> None:
        """Block until ``position`` is in the view; re-raise the thread's error."""
        view = self.projector.view
        try:
            view.wait(view.application_name, position, timeout, interrupt=self.dead)
        except Exception:
            if self.error is not None:
                raise self.error from None
            raise


def project_until(settings: Settings, stop: threading.Event) -> None:
    """Run a container's projector in this thread until ``stop`` is set."""
    with Bootstrap(settings) as container:
        container.projector().run(stop)


def publish_until(settings: Settings, stop: threading.Event, **options: Any) -> None:
    """Run a container's outbox in this thread until ``stop`` is set."""
    with Bootstrap(settings) as container:
        run_blocking(container.outbox(**options).run, stop)


def outbox_of(
    settings: Settings, service: BatchService, kind: type[Outbox] = Outbox, **options: Any
) -> Outbox:
    """An outbox (``options`` as ``Outbox``; ``kind`` a subclass) on ``service``'s store,
    its tables there."""
    with ddl_lock(settings):
        create_outbox_tables(service)
    return kind(settings, service, **options)


def rebuilt(
    settings: Settings, progress: Progress | None = None, *, page_size: int = 1000
) -> RebuildSummary:
    """Rebuild the read model of ``settings`` with a container's service and view."""
    with Bootstrap(settings) as container:
        return rebuild(
            settings, progress, service=container.service, view=container.view, page_size=page_size
        )
