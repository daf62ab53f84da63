"""The ``fedcustomer`` command: a thin shell over library functions.

Each command group lives in its own module and is registered below. Errors of the
``FedCustomerError`` family are printed without a traceback and mapped to the
documented exit codes (see ``fedcustomer.errors``).
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from fedcustomer.cli.terminal import terminal
from fedcustomer.errors import FedCustomerError

app = typer.Typer(
    name="fedcustomer",
    help="Privacy-preserving federated customer analytics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = terminal(stderr=True)


_registered = False


def _register() -> None:
    """Attach every command group once; each module owns its commands."""
    global _registered
    if _registered:
        return
    _registered = True
    from fedcustomer.cli import training

    training.register(app)
    from fedcustomer.cli import audit, audit_export, audit_privacy

    audit.register(app)
    audit_export.register(app)  # adds `audit export` to the group
    audit_privacy.register(app)  # adds `audit privacy` to the group
    from fedcustomer.cli import governance

    governance.register(app)
    from fedcustomer.cli import people

    people.register(app)
    from fedcustomer.cli import vertical

    vertical.register(app)
    from fedcustomer.cli import psi

    psi.register(app)
    from fedcustomer.cli import analytics

    analytics.register(app)
    from fedcustomer.cli import deploy

    deploy.register(app)
    from fedcustomer.cli import features

    features.register(app)
    from fedcustomer.cli import console

    console.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the Typer app, turning product errors into clean exits."""
    _register()
    try:
        app(args=argv, standalone_mode=False)
    except FedCustomerError as exc:
        err_console.print(f"[bold red]error[/]: {escape(str(exc))}")
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors come through here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
