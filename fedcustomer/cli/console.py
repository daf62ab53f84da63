"""``fedcustomer console``: the web console, and the signing commands its pages ask for.

``fedcustomer console --home DIR [--runs DIR] --port P`` serves the console for one
partner home, bound to 127.0.0.1 unless ``--host`` says otherwise, over TLS when given
``--cert`` and ``--key`` (e.g. from ``fedcustomer certs``). ``--oidc-issuer``,
``--oidc-audience`` and ``--oidc-jwks`` (URL or file) accept ID tokens of the
organisation's identity provider. See docs/CONSOLE.md.

``console sign --identity FILE INTENT`` signs what a console page asks (an approval, a
rejection, console credentials for a colleague) and prints the token to paste back;
``console sign-challenge`` does the same for the sign-in challenge. ``console enrol``
gives a person console credentials from the command line (the first admin's, before
anyone can sign in with a password).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from fedcustomer.cli.identity import IdentityOpt, load_signer
from fedcustomer.cli.terminal import terminal
from fedcustomer.errors import ConfigError

console_app = typer.Typer(
    help="The web console (audit, budgets, approvals, people, ingests, runs) and its signing commands.",
    invoke_without_command=True,
    no_args_is_help=False,
)
out = terminal()


def register(app: typer.Typer) -> None:
    """Attach the ``console`` command group to the root app."""
    app.add_typer(console_app, name="console")


@console_app.callback()
def serve_cmd(
    ctx: typer.Context,
    home: Path | None = typer.Option(None, "--home", help="Partner home the console serves."),
    runs: Path | None = typer.Option(None, "--runs", help="Folder of run directories to show."),
    port: int = typer.Option(8400, "--port", help="TCP port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    cert: Path | None = typer.Option(
        None, "--cert", help="TLS certificate (PEM), e.g. from `fedcustomer certs`."
    ),
    key: Path | None = typer.Option(None, "--key", help="TLS private key (PEM)."),
    oidc_issuer: str | None = typer.Option(None, "--oidc-issuer", help="Accept ID tokens from this issuer."),
    oidc_audience: str | None = typer.Option(
        None, "--oidc-audience", help="... whose audience is this client id."
    ),
    oidc_jwks: str | None = typer.Option(
        None, "--oidc-jwks", help="... signed by a key of this JWKS (URL or file)."
    ),
    oidc_claim: str = typer.Option(
        "preferred_username", "--oidc-claim", help="Claim naming the registered person."
    ),
) -> None:
    """Serve the console (when no subcommand is given)."""
    if ctx.invoked_subcommand is not None:
        return
    if home is None:
        raise ConfigError("give --home DIR: the partner home the console serves")
    if runs is not None and not runs.is_dir():
        raise ConfigError(f"--runs {runs}: directory not found")
    from fedcustomer.console.app import serve
    from fedcustomer.console.context import ConsoleSettings
    from fedcustomer.console.oidc import OidcConfig

    oidc = None
    if oidc_issuer or oidc_audience or oidc_jwks:
        oidc = OidcConfig(oidc_issuer or "", oidc_audience or "", oidc_jwks or "", oidc_claim)
    scheme = "https" if cert else "http"
    terminal(stderr=True).print(
        f"console for {escape(str(home))} on {scheme}://{escape(host)}:{port}/ (Ctrl-C stops)"
    )
    serve(ConsoleSettings(home=home, runs=runs, oidc=oidc), host=host, port=port, cert=cert, key=key)


@console_app.command("sign")
def sign_cmd(
    intent: str = typer.Argument(..., help="The text the console page shows."),
    identity: Path = IdentityOpt,
) -> None:
    """Sign what a console page asks; paste the printed token back into the page."""
    from fedcustomer.console.intents import read_intent, sign_intent

    body = read_intent(intent)
    terminal(stderr=True).print(
        f"signing [bold]{escape(str(body['action']))}[/] for partner {escape(str(body['partner']))}: "
        f"{escape(str(body['extra']))}"
    )
    typer.echo(sign_intent(load_signer(identity), intent))


@console_app.command("sign-challenge")
def sign_challenge_cmd(
    challenge: str = typer.Argument(..., help="The challenge the console's key sign-in page shows."),
    identity: Path = IdentityOpt,
) -> None:
    """Sign the console's sign-in challenge with your identity key."""
    from fedcustomer.console.actions import LOGIN
    from fedcustomer.console.intents import read_intent, sign_intent

    if read_intent(challenge)["action"] != LOGIN:
        raise ConfigError(
            "that is not a sign-in challenge; use `fedcustomer console sign` for other requests"
        )
    typer.echo(sign_intent(load_signer(identity), challenge))


@console_app.command("enrol")
def enrol_cmd(
    home: Path = typer.Option(..., "--home", help="Partner home."),
    person: str = typer.Option(..., "--person", help="Registered name of the person to enrol."),
    identity: Path = IdentityOpt,
) -> None:
    """Give a person console credentials (a first password and a TOTP secret), signed by you."""
    from fedcustomer.console.actions import enrol, enrol_intent
    from fedcustomer.console.context import ConsoleContext, ConsoleSettings
    from fedcustomer.console.intents import sign_intent

    ctx = ConsoleContext(ConsoleSettings(home=home))
    signer = load_signer(identity)
    admin = ctx.registry.active(signer.key_id)
    target = ctx.person_by_name(person)
    if target is None:
        raise ConfigError(f"no active person called {person!r} in the people registry")
    token = sign_intent(signer, enrol_intent(ctx.partner, target.key_id))
    enrolment = enrol(ctx.home, ctx.credentials, admin, target, token)
    out.print(
        f"console credentials for [bold]{escape(target.name)}[/] (shown once; hand them over in person)"
    )
    out.print(f"  password:    {escape(enrolment.password)}")
    out.print(f"  TOTP secret: {escape(enrolment.totp_secret)}")
    out.print(f"  URI:         {escape(enrolment.provisioning_uri(target.name))}")
