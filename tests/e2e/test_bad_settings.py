"""A wrong setting fails early, in one line naming the variable, exit 2; a stopping
process never waits on a silent server.

Against the real PostgreSQL and Redis; the wrong servers are real sockets too: one
that answers with HTTP (not Redis), one that accepts and never says anything (a
listener that is not Kafka), and a port already taken (METRICS_PORT).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from application.commands import RegisterBatch
from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.local_broker import LocalBroker
from infrastructure.settings import Settings, SettingsError, load_settings
from tests.conftest import TEST_REDIS_URL, make_settings
from tests.e2e.conftest import service_env, terminate
from tests.e2e.test_cli import batchctl, one_line_error
from tests.support.proxy import ProxyThread
from tests.support.scratch import drop_redis_prefix, drop_schema, new_tag, topic_env

ROOT = Path(__file__).resolve().parents[2]
REDIS_BASE = TEST_REDIS_URL.rsplit("/", 1)[0]


class Listener:
    """A loopback TCP listener: ``silent`` accepts and never answers; else it answers
    whatever it is sent with an HTTP error, as a web server would."""

    def __init__(self, silent: bool) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(50)
        self.port = int(self.sock.getsockname()[1])
        self.silent = silent
        self.held: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            if not self.silent:
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        try:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def initialised(test_settings: Settings) -> Settings:
    with Bootstrap(test_settings) as built:
        built.create_store()
    return test_settings


@pytest.fixture
def http_listener() -> Iterator[Listener]:
    listener = Listener(silent=False)
    yield listener
    listener.close()


@pytest.fixture
def silent_listener() -> Iterator[Listener]:
    listener = Listener(silent=True)
    yield listener
    listener.close()


def run(settings: Settings, *args: str, timeout: float = 60, **extra: str) -> tuple[
    subprocess.CompletedProcess[str], float
]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "infrastructure.cli.main", *args],
        cwd=ROOT,
        env=service_env(settings, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result, time.monotonic() - started


def last_error(result: subprocess.CompletedProcess[str]) -> str:
    """A process's last stderr line (its JSON logs come before): the one-line error."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), result.stderr[-3000:]
    return line


# ----------------------------------------------------------- REDIS_URL


@pytest.mark.parametrize("url", [f"{REDIS_BASE}/abc", f"{REDIS_BASE}/0?db=x", f"{REDIS_BASE}/-1"])
def test_a_redis_database_that_is_not_a_number_is_refused(url: str) -> None:
    with pytest.raises(SettingsError, match=r"^REDIS_URL: .*must be a number"):
        load_settings({"REDIS_URL": url})


def test_a_redis_database_that_is_not_a_number_stops_every_command(
    test_settings: Settings,
) -> None:
    for command in (["status", "b1"], ["verify"], ["projector"]):
        line = one_line_error(batchctl(test_settings, *command, REDIS_URL=f"{REDIS_BASE}/abc"))
        assert "invalid configuration: REDIS_URL" in line and "'abc'" in line, (command, line)


def test_a_redis_database_out_of_range_is_one_line(initialised: Settings) -> None:
    url = f"{REDIS_BASE}/99"
    line = one_line_error(batchctl(initialised, "verify", REDIS_URL=url))
    assert line.startswith("error: REDIS_URL: ") and "no such database" in line, line
    result, _ = run(initialised, "projector", REDIS_URL=url, STARTUP_TIMEOUT_SECONDS="30")
    line = last_error(result)
    assert "REDIS_URL" in line and "no such database" in line, line


def test_a_server_that_is_not_redis_is_one_line(
    initialised: Settings, http_listener: Listener
) -> None:
    url = f"redis://:not-shown@127.0.0.1:{http_listener.port}/0"
    line = one_line_error(batchctl(initialised, "verify", REDIS_URL=url))
    assert line.startswith("error: REDIS_URL: ") and "does not answer as Redis" in line, line
    assert "not-shown" not in line
    result, seconds = run(initialised, "projector", REDIS_URL=url, STARTUP_TIMEOUT_SECONDS="30")
    line = last_error(result)
    assert "REDIS_URL" in line and "does not answer as Redis" in line, line
    assert seconds < 20  # not waited for as if it were restarting
    assert "not-shown" not in result.stderr


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_retrying_redis_is_named_in_the_log(test_settings: Settings) -> None:
    """An unreachable Redis: the retry lines name host:port and REDIS_URL, no password."""
    port = free_port()
    url = f"redis://:hidden-pw@127.0.0.1:{port}/0"
    result, seconds = run(
        test_settings, "projector", REDIS_URL=url, STARTUP_TIMEOUT_SECONDS="3"
    )
    last_error(result)
    retrying = [ln for ln in result.stderr.splitlines() if "retrying" in ln]
    assert retrying, result.stderr
    assert all(f"Redis at 127.0.0.1:{port} (REDIS_URL)" in ln for ln in retrying)
    assert "hidden-pw" not in result.stderr
    assert seconds < 30


# -------------------------------------------------------- METRICS_PORT


def test_a_metrics_port_in_use_is_one_line(test_settings: Settings) -> None:
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen(1)
    try:
        port = str(taken.getsockname()[1])
        result, seconds = run(test_settings, "projector", METRICS_PORT=port)
        line = last_error(result)
        assert f"METRICS_PORT: cannot serve on port {port}" in line, line
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # before any log
        assert seconds < 20
    finally:
        taken.close()


# ----------------------------------------------- KAFKA_BOOTSTRAP_SERVERS


@pytest.fixture
def silent_kafka(silent_listener: Listener) -> Iterator[Settings]:
    s = make_settings(
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{silent_listener.port}", **topic_env(new_tag(8))
    )
    yield s
    drop_schema(s)
    drop_redis_prefix(s)


@pytest.mark.parametrize("command", ["worker", "outbox", "run"])
def test_a_listener_that_is_not_kafka_fails_within_the_startup_timeout(
    silent_kafka: Settings, command: str
) -> None:
    args = [command, "--no-local-broker"] if command == "run" else [command]
    result, seconds = run(silent_kafka, *args, STARTUP_TIMEOUT_SECONDS="3")
    line = last_error(result)
    assert "KAFKA_BOOTSTRAP_SERVERS" in line and "STARTUP_TIMEOUT_SECONDS=3" in line, line
    assert seconds < 3 + 5, seconds  # not a whole Kafka request timeout (30 s)


def test_dlq_list_against_a_listener_that_is_not_kafka_is_one_line(
    silent_kafka: Settings,
) -> None:
    result, seconds = run(silent_kafka, "dlq", "list", STARTUP_TIMEOUT_SECONDS="3")
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no aiokafka noise around it
    assert "KAFKA_BOOTSTRAP_SERVERS" in lines[0] and "STARTUP_TIMEOUT_SECONDS" in lines[0]
    assert seconds < 3 + 5, seconds


@pytest.mark.parametrize("command", ["worker", "outbox", "run"])
def test_sigterm_while_waiting_for_a_silent_broker_stops_within_10_s(
    silent_kafka: Settings, command: str
) -> None:
    args = [command, "--no-local-broker"] if command == "run" else [command]
    proc = subprocess.Popen(
        [sys.executable, "-m", "infrastructure.cli.main", *args],
        cwd=ROOT,
        env=service_env(silent_kafka, STARTUP_TIMEOUT_SECONDS="120"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)  # well inside a Kafka request to the silent listener
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 10
        assert proc.returncode == 0, err[-2000:]
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("command", ["worker", "projector", "outbox", "run"])
def test_sigterm_stops_a_running_process_within_10_s(e2e_settings: Settings, command: str) -> None:
    args = [command, "--no-local-broker"] if command == "run" else [command]
    proc = subprocess.Popen(
        [sys.executable, "-m", "infrastructure.cli.main", *args],
        cwd=ROOT,
        env=service_env(e2e_settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        seen = ""
        while "service started" not in seen and time.monotonic() < deadline:
            seen = proc.stderr.readline()
        assert "service started" in seen
        time.sleep(0.5)  # a worker is joining its group now: the slowest moment to stop
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        proc.wait(timeout=30)
        assert time.monotonic() - started < 10
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_projector_that_loses_redis_names_it_while_retrying(
    initialised: Settings, tmp_path: Path
) -> None:
    redis_parts = urlsplit(TEST_REDIS_URL)
    proxy = ProxyThread(redis_parts.hostname or "127.0.0.1", redis_parts.port or 6379).start()
    log_path = tmp_path / "projector.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infrastructure.cli.main", "projector"],
            cwd=ROOT,
            env=service_env(initialised, REDIS_URL=f"redis://{proxy.address}/0"),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        deadline = time.monotonic() + 60
        while "service started" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "service started" in log_path.read_text()
        address = proxy.address
        proxy.stop()  # Redis is gone for the projector: connections refused
        with Bootstrap(initialised) as built:
            built.service.register(
                RegisterBatch(batch_id="lost-redis", correlation_id="c", essay_ids=["e1"])
            )
        wanted = f"Redis at {address} (REDIS_URL); retrying"
        while wanted not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert wanted in log_path.read_text(), log_path.read_text()[-3000:]
    finally:
        terminate(proc, timeout=20)


@pytest.fixture(scope="module")
def proxied_broker() -> Iterator[ProxyThread]:
    """A broker of its own that clients reach only through a proxy (it advertises the
    proxy), so the proxy can make the whole broker go silent."""
    broker = LocalBroker()
    proxy = ProxyThread(broker.host, broker.port).start()
    broker.advertised = proxy.address
    broker.start()
    yield proxy
    broker.stop()
    proxy.stop()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("command", ["worker", "outbox", "run"])
def test_sigterm_with_a_broker_gone_silent_stops_within_10_s(
    proxied_broker: ProxyThread, command: str, tmp_path: Path
) -> None:
    proxy = proxied_broker
    s = make_settings(KAFKA_BOOTSTRAP_SERVERS=proxy.address, **topic_env(new_tag(8)))
    args = [command, "--no-local-broker"] if command == "run" else [command]
    log_path = tmp_path / "service.log"

    def start() -> subprocess.Popen[bytes]:
        with log_path.open("w") as log_file:
            return subprocess.Popen(
                [sys.executable, "-m", "infrastructure.cli.main", *args],
                cwd=ROOT,
                env=service_env(s),
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )

    def started(what: str) -> None:
        deadline = time.monotonic() + 60
        while what not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert what in log_path.read_text(), log_path.read_text()[-3000:]

    # A member killed without leaving its group: the next one's join waits for its
    # session to expire, and the broker goes silent during that join.
    proc = start()
    started("worker started" if command != "outbox" else "service started")
    proc.kill()
    proc.wait()
    proc = start()
    try:
        started("service started")
        time.sleep(2)
        proxy.partition()  # every connection to the broker, old and new, goes silent
        time.sleep(4)  # mid-request: the join, fetches and metadata all unanswered
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        proc.wait(timeout=60)
        assert time.monotonic() - started < 10, log_path.read_text()[-3000:]
        assert proc.returncode == 0, log_path.read_text()[-3000:]
    finally:
        proxy.heal(reset=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        drop_schema(s)
        drop_redis_prefix(s)


# ------------------------------------------------- `batchctl run`'s metrics port


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            sock.bind(("0.0.0.0", port))  # where the health server binds
        except OSError:
            return False
        return True


def _run_env(s: Settings) -> dict[str, str]:
    env = service_env(s)
    del env["METRICS_PORT"]  # as an operator runs it: nothing set
    return env


def test_run_serves_health_on_9100_by_default(e2e_settings: Settings, tmp_path: Path) -> None:
    if not _port_free(9100):
        pytest.skip("port 9100 is in use on this machine")
    log_path = tmp_path / "run.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infrastructure.cli.main", "run", "--no-local-broker"],
            cwd=ROOT,
            env=_run_env(e2e_settings),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        deadline, status = time.monotonic() + 60, None
        while status != 200 and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen("http://127.0.0.1:9100/readyz", timeout=5) as r:
                    status = r.status
            except OSError:
                time.sleep(0.3)
        assert status == 200, log_path.read_text()[-3000:]
    finally:
        terminate(proc, timeout=20)


def test_run_on_a_host_where_9100_is_taken_is_one_line(e2e_settings: Settings) -> None:
    held = socket.socket()
    try:
        if _port_free(9100):  # else something else holds it: the same case
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            held.bind(("0.0.0.0", 9100))
            held.listen(1)
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "infrastructure.cli.main", "run", "--no-local-broker"],
            cwd=ROOT,
            env=_run_env(e2e_settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
        line = last_error(result)
        assert "METRICS_PORT: cannot serve on port 9100" in line, line
        assert time.monotonic() - started < 20
    finally:
        held.close()
