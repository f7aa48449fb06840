"""batchctl: the operator's command line (CONTRACT §6, guide in docs/cli.md).

Exit status: 0 success, 1 a finding (verify), 2 bad usage or an unreachable
dependency. Every error is one line on stderr that names what to fix; no
setting's secret ever appears in it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version
from typing import Annotated, Any, NoReturn

import typer

from infrastructure.cli import (
    batches,
    completion,
    deadletters,
    initialise,
    inspection,
    pending,
    readmodel,
    services,
    store,
    transfer,
)
from infrastructure.cli.common import CliError
from infrastructure.cli.errors import dependency_error
from infrastructure.cli.pipes import StdoutClosed, discard_stdout, guard_stdout


class BatchCtl(typer.Typer):
    """A Typer app whose errors are single lines and whose exit codes follow the contract."""

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        command = typer.main.get_command(self)
        argv: Sequence[str] | None = kwargs.pop("args", args[0] if args else None)
        kwargs.setdefault("prog_name", "batchctl")
        try:
            with guard_stdout():
                result = command.main(args=argv, standalone_mode=False, **kwargs)
        except StdoutClosed:  # the reader took what it wanted (`batchctl replay | head`)
            discard_stdout()
            sys.exit(0)
        except typer.TyperException as e:  # click's usage errors (typer vendors click)
            ctx = getattr(e, "ctx", None)
            if type(e).__name__ == "NoArgsIsHelpError":
                sys.exit(2)  # typer has already printed the help
            _die(_usage_line(e, ctx), 2)
        except typer.Abort:
            _die("aborted", 130)
        except CliError as e:
            _die(str(e), e.exit_code)
        except Exception as e:
            line = dependency_error(e)
            if line is None:
                raise
            _die(line, 2)
        sys.exit(result if isinstance(result, int) else 0)


def _usage_line(e: typer.TyperException, ctx: Any) -> str:
    where = ctx.command_path if ctx is not None else "batchctl"
    hint = f" (see '{where} --help')" if ctx is not None else ""
    return f"{where}: {e.format_message()}{hint}".replace("\n", " ")


def _die(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


app = BatchCtl(
    name="batchctl",
    help=(
        "Operate the batch slot service: run its processes, inspect batches, replay, "
        "export and import the event store, rebuild and verify the Redis read model.\n\n"
        "Configuration comes from the environment (DATABASE_URL, DATABASE_SCHEMA, REDIS_URL, "
        "REDIS_KEY_PREFIX, KAFKA_BOOTSTRAP_SERVERS, ...). Exit status: 0 success, 1 a finding "
        "(verify), 2 bad usage or an unreachable dependency."
    ),
    no_args_is_help=True,
    # --install-completion / --show-completion [bash|zsh|fish|powershell] (docs/cli.md)
    add_completion=True,
    pretty_exceptions_show_locals=False,  # locals can hold connection strings
    context_settings={"help_option_names": ["-h", "--help"]},
)



def installed_version() -> str:
    try:
        return distribution_version("batch-slot-service")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"batchctl {installed_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_print_version, is_eager=True,
            help="Show the installed version and exit.",
        ),
    ] = False,
) -> None:
    """Options that come before the command."""


app.command()(initialise.init)
app.command()(inspection.status)
app.command()(inspection.audit)
app.command()(store.replay)
app.command()(transfer.export)
app.command("import")(transfer.import_)
app.command()(readmodel.rebuild)
app.command()(readmodel.verify)
services.register(app)
app.add_typer(deadletters.app, name="dlq")
app.command()(pending.pending)
app.command()(batches.batches)
app.command()(completion.completion)


if __name__ == "__main__":
    app()
