"""The service's processes under test, each restartable, their logs kept."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.chaos.common import ROOT


class Fleet:
    """The service's processes, each restartable, their logs under ``log_dir``."""

    def __init__(
        self, env: dict[str, str], workers: int, log_dir: Path, t0: float, standbys: bool = False
    ) -> None:
        self.env, self.log_dir, self.t0 = env, log_dir, t0
        self.roles = {f"worker-{i}": "worker" for i in range(workers)}
        self.roles.update({"projector": "projector", "outbox": "outbox"})
        if standbys:  # a second projector and outbox, standing by for the leases
            self.roles.update({"projector-standby": "projector", "outbox-standby": "outbox"})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.expected_dead: set[str] = set()
        self.unexpected: list[str] = []

    def start(self, name: str) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "infrastructure.cli.main", self.roles[name]],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.expected_dead.discard(name)

    def named(self, pid: int | None) -> str | None:
        """The fleet's name of the running process with this OS process id."""
        for name, proc in self.procs.items():
            if pid is not None and proc.pid == pid and proc.poll() is None:
                return name
        return None

    def start_all(self) -> None:
        for name in self.roles:
            self.start(name)

    def restart_all_at_once(self) -> None:
        """SIGKILL every process, then start them all at the same instant."""
        for name in self.roles:
            if self.procs[name].poll() is None:
                self.signal(name, signal.SIGKILL)
        self.start_all()

    def signal(self, name: str, sig: signal.Signals) -> None:
        if sig == signal.SIGKILL:
            self.expected_dead.add(name)
        self.procs[name].send_signal(sig)
        if sig == signal.SIGKILL:
            self.procs[name].wait(timeout=10)

    def supervise(self) -> None:
        """Restart a process that exited on its own (as systemd would), and note it."""
        for name, proc in self.procs.items():
            if proc.poll() is not None and name not in self.expected_dead:
                tail = _tail(self.log_dir / f"{name}.log")
                at = time.monotonic() - self.t0
                self.unexpected.append(f"{name} exited {proc.returncode} at {at:.0f}s: {tail}")
                self.start(name)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "?"
    errors = [ln for ln in lines if ln.startswith(("error:", "Traceback")) or '"ERROR"' in ln]
    return (errors or lines or ["(no output)"])[-1][:300]
