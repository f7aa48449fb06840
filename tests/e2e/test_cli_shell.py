"""batchctl in a shell: --version, completion, and output into a pipe closed early.

Real subprocesses; the pipe tests run against real PostgreSQL (per-test schema).
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from application.commands import ProvisionContent, RegisterBatch
from application.service import BatchService
from infrastructure.settings import Settings
from tests.e2e.test_cli import batchctl, env_of, one_line_error

ROOT = Path(__file__).resolve().parents[2]
BATCHCTL = Path(sys.executable).parent / "batchctl"


def test_version_prints_the_installed_distribution_version(test_settings: Settings) -> None:
    for flag in ("--version", "-V"):
        result = batchctl(test_settings, flag)
        assert result.returncode == 0, result
        assert result.stdout.strip() == f"batchctl {version('batch-slot-service')}"
        assert result.stderr == ""


def test_version_needs_no_configuration(test_settings: Settings) -> None:
    """--version answers even where no setting is valid (it reads no configuration)."""
    result = batchctl(test_settings, "--version", DATABASE_URL="mysql://nope")
    assert result.returncode == 0 and result.stdout.startswith("batchctl ")


@pytest.fixture
def many_events(test_settings: Settings, service: BatchService) -> Settings:
    """About 1,000 events: far more output than a pipe buffers (64 KiB), so the writer is
    still writing when the reader goes away."""
    slots = [f"e{i}" for i in range(1000)]
    commands: list[Any] = [RegisterBatch(batch_id="big", correlation_id="c", essay_ids=slots)]
    commands += [
        ProvisionContent(batch_id="big", correlation_id="c", text_storage_id=f"t{i}",
                         file_upload_id=f"f{i}", original_file_name=f"{i}.txt")
        for i in range(1000)
    ]
    service.execute(commands)
    return test_settings


@pytest.mark.parametrize("args", [["replay", "--json"], ["replay"]], ids=["json", "table"])
def test_replay_into_head_exits_quietly(many_events: Settings, args: list[str]) -> None:
    """`batchctl replay | head` as a shell runs it: exit 0, nothing on stderr."""
    command = " ".join([sys.executable, "-m", "infrastructure.cli.main", *args])
    result = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command} | head -n 3"],
        cwd=ROOT, env=env_of(many_events), capture_output=True, text=True, timeout=120,
    )
    assert result.stderr == "", result.stderr
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 3


def test_reader_closing_the_pipe_mid_stream(many_events: Settings) -> None:
    """The reader takes one line and closes its end while batchctl is blocked writing."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "infrastructure.cli.main", "replay", "--json"],
        cwd=ROOT, env=env_of(many_events), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    assert first.startswith(b"{")
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert stderr == ""


def test_broken_pipe_of_something_else_is_not_hidden(test_settings: Settings) -> None:
    """Only a closed stdout is quiet: with stdout intact, errors still surface (exit 2)."""
    result = batchctl(test_settings, "replay", DATABASE_URL="postgresql://x@127.0.0.1:1/db")
    assert result.returncode == 2 and "DATABASE_URL" in result.stderr


# ------------------------------------------------------------------ completion


def complete(line: str, shell_script: str) -> list[str]:
    """What bash offers for ``line`` (ending in the word being completed), through the
    script batchctl printed and the batchctl executable, as an interactive bash would."""
    words = line.split(" ")
    program = (
        'source /dev/stdin; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); '
        '_batchctl_completion batchctl; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    env = {**os.environ, "PATH": f"{BATCHCTL.parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-c", program, "bash", *words], input=shell_script, env=env,
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result
    return [w for w in result.stdout.splitlines() if w]


@pytest.mark.skipif(not BATCHCTL.exists(), reason="batchctl script not installed")
def test_bash_completion_completes_commands_and_options(test_settings: Settings) -> None:
    script = batchctl(test_settings, "completion", "bash")
    assert script.returncode == 0 and "_BATCHCTL_COMPLETE" in script.stdout
    assert sorted(complete("batchctl re", script.stdout)) == ["rebuild", "replay"]
    assert complete("batchctl dlq red", script.stdout) == ["redrive"]
    assert complete("batchctl replay --from", script.stdout) == ["--from-position"]


def test_completion_scripts_for_each_shell(test_settings: Settings) -> None:
    for shell, marker in {
        "zsh": "#compdef batchctl", "fish": "complete --command batchctl",
        "powershell": "Register-ArgumentCompleter",
    }.items():
        result = batchctl(test_settings, "completion", shell)
        assert result.returncode == 0 and marker in result.stdout, (shell, result)
    assert "zsh" in one_line_error(batchctl(test_settings, "completion", "tcsh"))


def test_typer_completion_options_are_offered(test_settings: Settings) -> None:
    result = batchctl(test_settings, "--help")
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout


# ------------------------------------------------------------------ broken pipes elsewhere


def test_a_broken_pipe_that_is_not_stdout_still_fails() -> None:
    """Only the reader of stdout going away is a quiet success; a broken socket is not."""
    import socket

    from infrastructure.cli.main import BatchCtl

    app = BatchCtl(add_completion=False)

    @app.command()
    def send() -> None:
        a, b = socket.socketpair()
        b.close()
        a.sendall(b"x" * 1_000_000)  # BrokenPipeError (EPIPE) from the socket

    @app.command()
    def other() -> None:
        pass

    with pytest.raises(SystemExit) as exit_:
        app(["send"])
    assert exit_.value.code != 0
