"""batchctl completion SHELL: the shell completion script, for a named shell.

typer's ``--install-completion`` / ``--show-completion`` detect the running
shell, which fails where there is none to detect (a Dockerfile ``RUN``, a
provisioning script); this command takes the shell by name and prints the same
script. Completion itself runs through the ``batchctl`` entry point like any
command (click's ``_BATCHCTL_COMPLETE`` protocol).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from typer._completion_shared import get_completion_script


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"
    powershell = "powershell"
    pwsh = "pwsh"


def completion(
    shell: Annotated[Shell, typer.Argument(help="The shell to complete in.")],
) -> None:
    """Print the shell completion script for SHELL (bash, zsh, fish, powershell, pwsh).

    Examples:

        batchctl completion bash > /etc/bash_completion.d/batchctl

        echo 'eval "$(batchctl completion zsh)"' >> ~/.zshrc

        batchctl completion fish > ~/.config/fish/completions/batchctl.fish
    """
    typer.echo(
        get_completion_script(
            prog_name="batchctl", complete_var="_BATCHCTL_COMPLETE", shell=shell.value
        )
    )
