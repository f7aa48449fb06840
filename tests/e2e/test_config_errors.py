"""Kafka configuration errors exit 2 with one line naming the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from infrastructure.settings import SettingsError, load_settings
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.e2e.test_secrets import process_env

ROOT = Path(__file__).resolve().parents[2]
BASE = {
    "DATABASE_URL": TEST_DATABASE_URL,
    "REDIS_URL": TEST_REDIS_URL,
    "STARTUP_TIMEOUT_SECONDS": "1",
}
CASES = {
    "bootstrap without a port": (
        {"KAFKA_BOOTSTRAP_SERVERS": "nohostport"},
        "KAFKA_BOOTSTRAP_SERVERS",
    ),
    "bootstrap list with a bad entry": (
        {"KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2"},
        "KAFKA_BOOTSTRAP_SERVERS",
    ),
    "bootstrap port out of range": (
        {"KAFKA_BOOTSTRAP_SERVERS": "kafka:99999"},
        "KAFKA_BOOTSTRAP_SERVERS",
    ),
    "SASL without a username": (
        {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN"},
        "KAFKA_SASL_USERNAME",
    ),
    "SASL without a password": (
        {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "svc"},
        "KAFKA_SASL_PASSWORD",
    ),
    "missing CA file": (
        {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
        "KAFKA_SSL_CAFILE",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_settings_name_the_variable(case: str) -> None:
    env, variable = CASES[case]
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, **env})
    assert str(caught.value).startswith(f"{variable}: ")


@pytest.mark.parametrize("case", list(CASES))
def test_batchctl_exits_2_with_one_line(case: str) -> None:
    env, variable = CASES[case]
    for command in (["worker"], ["run"], ["outbox"]):
        result = subprocess.run(
            [sys.executable, "-m", "infrastructure.cli.main", *command],
            env=process_env({**BASE, **env}),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        text = result.stdout + result.stderr
        assert result.returncode == 2, (command, text[-2000:])
        assert "Traceback" not in text, (command, text[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (command, text[-2000:])
        assert variable in lines[0], (command, lines[0])


def test_a_readable_ca_file_and_full_sasl_credentials_are_accepted(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    s = load_settings(
        {
            **BASE,
            "KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092, kafka-2:9093,[::1]:9094",
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_USERNAME": "svc",
            "KAFKA_SASL_PASSWORD": "pw",
            "KAFKA_SSL_CAFILE": str(ca),
        }
    )
    assert s.kafka_ssl_cafile == str(ca)
