"""Kafka client arguments from Settings: security, producer ordering settings."""

from __future__ import annotations

import asyncio
import ssl

from infrastructure.kafka.clients import client_kwargs, make_producer, producer_kwargs
from infrastructure.settings import load_settings


def test_plaintext_defaults() -> None:
    kwargs = client_kwargs(load_settings({"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092"}))
    assert kwargs["bootstrap_servers"] == "k1:9092,k2:9092"
    assert kwargs["security_protocol"] == "PLAINTEXT"
    assert "sasl_plain_password" not in kwargs and "ssl_context" not in kwargs


def test_sasl_scram_over_tls() -> None:
    settings = load_settings(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": "svc",
            "KAFKA_SASL_PASSWORD": "s3cret-pw",
        }
    )
    kwargs = client_kwargs(settings)
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "svc"
    assert kwargs["sasl_plain_password"] == "s3cret-pw"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in str(settings.redacted())


def test_producer_keeps_order_and_idempotence_is_opt_in() -> None:
    assert producer_kwargs(load_settings({}))["acks"] == "all"
    assert producer_kwargs(load_settings({}))["enable_idempotence"] is False
    enabled = load_settings({"KAFKA_ENABLE_IDEMPOTENCE": "true"})
    assert producer_kwargs(enabled)["enable_idempotence"] is True

    async def build() -> None:
        await make_producer(enabled).stop()  # aiokafka accepts the combination

    asyncio.run(build())
