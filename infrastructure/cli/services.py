"""batchctl worker / projector / outbox / run: the long-running processes.

Each runs until SIGINT or SIGTERM, then finishes what it holds and exits 0.
"""

from __future__ import annotations

import asyncio
import logging

import typer

from infrastructure import logs
from infrastructure.kafka.local_broker import BrokerUnavailable
from infrastructure.settings import load_settings

LOCAL_BROKER_HELP = (
    "Start the local Kafka-protocol broker (memory only) when KAFKA_BOOTSTRAP_SERVERS is unset "
    "and nothing answers on 127.0.0.1:9092."
)


# `batchctl run` serves /metrics, /healthz and /readyz here unless METRICS_PORT says otherwise.
RUN_METRICS_PORT = 9100


def _serve(worker: bool, projector: bool, outbox: bool, local_broker: bool) -> None:
    from infrastructure.cli.common import fail
    from infrastructure.processes.runtime import (
        ALL,
        Parts,
        StoppedBeforeStart,
        local_broker_if_needed,
        serve,
    )

    settings = load_settings()
    logs.configure(settings.log_level, settings.secrets())
    parts = Parts(worker=worker, projector=projector, outbox=outbox, sweep=worker)
    if parts == ALL and settings.metrics_port is None:  # `run`: health on by default
        settings = settings.model_copy(update={"metrics_port": RUN_METRICS_PORT})
    broker = None
    if parts.needs_kafka and local_broker:
        try:
            broker = local_broker_if_needed(settings)
        except BrokerUnavailable as e:
            fail(f"{e}: start the broker or fix KAFKA_BOOTSTRAP_SERVERS")
    try:
        asyncio.run(serve(settings, parts))
    except StoppedBeforeStart as e:  # SIGTERM while waiting for a dependency: a clean stop
        logging.getLogger("batchslot.runtime").info("service stopped", extra={"why": str(e)})
    finally:
        if broker is not None:
            broker.stop()


def worker() -> None:
    """Consume the inbound topics and execute commands; also runs the timeout sweep.

    Many instances may run at once: they share one consumer group
    (KAFKA_CONSUMER_GROUP).

    Example: KAFKA_BOOTSTRAP_SERVERS=kafka:9092 batchctl worker
    """
    _serve(worker=True, projector=False, outbox=False, local_broker=False)


def projector() -> None:
    """Keep the Redis read model up to date from the event store.

    Example: REDIS_URL=redis://cache:6379/0 batchctl projector
    """
    _serve(worker=False, projector=True, outbox=False, local_broker=False)


def outbox() -> None:
    """Publish every stored event to batch.events.v1, in order, at least once.

    Example: KAFKA_BOOTSTRAP_SERVERS=kafka:9092 batchctl outbox
    """
    _serve(worker=False, projector=False, outbox=True, local_broker=False)


def run(
    local_broker: bool = typer.Option(
        True, "--local-broker/--no-local-broker", help=LOCAL_BROKER_HELP
    ),
) -> None:
    """Worker, projector, outbox and sweep in one process, for a single machine.

    Serves /metrics, /healthz and /readyz on METRICS_PORT, 9100 unless set.

    Example: batchctl run        (then feed the inbound topics; Ctrl-C stops it)
    """
    _serve(worker=True, projector=True, outbox=True, local_broker=local_broker)


def register(app: typer.Typer) -> None:
    """Add the long-running service commands to the batchctl app."""
    for command in (worker, projector, outbox, run):
        app.command()(command)
