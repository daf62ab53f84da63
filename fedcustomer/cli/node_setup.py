"""`fedcustomer node setup --mode vertical`: a party declares its own data for vertical jobs, in its home.

Kept apart from :mod:`fedcustomer.cli.deploy`; it adds one command to the same ``node`` group.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from fedcustomer.cli.terminal import terminal
from fedcustomer.errors import ConfigError

console = terminal()


def register(node_app: typer.Typer) -> None:
    node_app.command(
        "setup",
        help="Declare this party's own dataset and feature spec for vertical jobs (kept in its home; the "
        "coordinator learns only the dataset name, the label role and the input width).",
    )(node_setup)


def node_setup(
    home: Path = typer.Option(..., "--home", help="The party's home (made with `fedcustomer init`)."),
    mode: str = typer.Option("vertical", "--mode", help="vertical (the only mode that needs a setup)."),
    dataset: str = typer.Option(
        ..., "--dataset", help="Dataset of its governed store (`fedcustomer ingest`)."
    ),
    feature_spec: Path = typer.Option(
        ...,
        "--feature-spec",
        help="Its feature spec JSON (`fedcustomer features draft`; without --label for a party that does "
        "not hold the label).",
    ),
    label_owner: bool = typer.Option(
        False, "--label-owner", help="This party holds the label (its spec names the label column and task)."
    ),
) -> None:
    if mode != "vertical":
        raise ConfigError(
            f"--mode must be vertical, got {mode!r}: a horizontal job names its dataset and feature spec itself"
        )
    from fedcustomer.data.features import FeatureSpec
    from fedcustomer.partner.home import PartnerHome
    from fedcustomer.vertical.declaration import declare_party

    the_home = PartnerHome(home)
    if not the_home.config_path.is_file():
        raise ConfigError(
            f"{home} is not a partner home (no partner.toml); create it with `fedcustomer init`"
        )
    spec = FeatureSpec.load(feature_spec)
    path = declare_party(the_home, dataset, spec, label_owner=label_owner)
    role = f"label owner ({spec.task}, label {spec.label!r})" if label_owner else "features only"
    console.print(
        f"party {the_home.config().name!r} declared for vertical jobs: dataset {dataset!r}, {role}, "
        f"{len(spec.features)} feature(s) ({spec.input_dim} encoded inputs); kept in {escape(str(path))}"
    )
