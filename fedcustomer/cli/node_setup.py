"""`fedcustomer node setup --mode vertical`: a party declares its own data for vertical jobs, in its home.

A governance action like a budget change: the acting person signs it with their identity key
(``--identity``), their registered role must be allowed ``policy_edit`` (a partner admin), and
the audit log records who declared (or removed) what, and when. A refusal changes nothing.

Kept apart from :mod:`fedcustomer.cli.deploy`; it adds one command to the same ``node`` group.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from fedcustomer.cli.identity import IdentityOpt, load_signer
from fedcustomer.cli.terminal import terminal
from fedcustomer.errors import ConfigError

console = terminal()


def register(node_app: typer.Typer) -> None:
    node_app.command(
        "setup",
        help="Declare this party's own dataset and feature spec for vertical jobs (kept in its home; the "
        "coordinator learns only the dataset name, the label role and the input width). Signed with your "
        "identity key and audit-logged; needs a role allowed policy_edit (partner_admin).",
    )(node_setup)


def node_setup(
    home: Path = typer.Option(..., "--home", help="The party's home (made with `fedcustomer init`)."),
    mode: str = typer.Option("vertical", "--mode", help="vertical (the only mode that needs a setup)."),
    identity: Path = IdentityOpt,
    dataset: str | None = typer.Option(
        None, "--dataset", help="Dataset of its governed store (`fedcustomer ingest`)."
    ),
    feature_spec: Path | None = typer.Option(
        None,
        "--feature-spec",
        help="Its feature spec JSON (`fedcustomer features draft`; without --label for a party that does "
        "not hold the label).",
    ),
    label_owner: bool = typer.Option(
        False, "--label-owner", help="This party holds the label (its spec names the label column and task)."
    ),
    remove: bool = typer.Option(
        False, "--remove", help="Withdraw the declaration: the party takes part in no own-data vertical job."
    ),
) -> None:
    """Declare (or with --remove withdraw) the party's own data for vertical jobs, as a signed, audited act."""
    if mode != "vertical":
        raise ConfigError(
            f"--mode must be vertical, got {mode!r}: a horizontal job names its dataset and feature spec itself"
        )
    from fedcustomer.data.features import FeatureSpec
    from fedcustomer.partner.home import PartnerHome
    from fedcustomer.vertical.declaration import declare_party, remove_declaration

    the_home = PartnerHome(home)
    if not the_home.config_path.is_file():
        raise ConfigError(
            f"{home} is not a partner home (no partner.toml); create it with `fedcustomer init`"
        )
    if remove:
        if dataset is not None or feature_spec is not None or label_owner:
            raise ConfigError("--remove takes no --dataset, --feature-spec or --label-owner")
        removed = remove_declaration(the_home, load_signer(identity))
        was = removed["previous"]
        named = f" (was dataset {was['dataset']!r})" if isinstance(was, dict) else ""
        console.print(f"party {the_home.config().name!r} withdrew its vertical declaration{named}")
        return
    if dataset is None or feature_spec is None:
        raise ConfigError("node setup --mode vertical needs --dataset and --feature-spec (or --remove)")
    spec = FeatureSpec.load(feature_spec)
    path = declare_party(the_home, load_signer(identity), dataset, spec, label_owner=label_owner)
    role = f"label owner ({spec.task}, label {spec.label!r})" if label_owner else "features only"
    console.print(
        f"party {the_home.config().name!r} declared for vertical jobs: dataset {dataset!r}, {role}, "
        f"{len(spec.features)} feature(s) ({spec.input_dim} encoded inputs); kept in {escape(str(path))}"
    )
