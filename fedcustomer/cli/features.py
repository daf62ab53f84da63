"""`fedcustomer features draft`: the training feature spec from a dataset's schema (declared bounds only)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from fedcustomer.cli.terminal import terminal
from fedcustomer.common.files import atomic_write_text
from fedcustomer.errors import ConfigError

console = terminal()
features_app = typer.Typer(
    help="Feature specs for training: what the model reads, with public bounds.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(features_app, name="features")


@features_app.command("draft", help="Write a feature spec from a dataset's schema (store or YAML file).")
def features_draft_cmd(
    output: Path = typer.Option(..., "--output", help="Where to write the feature spec JSON."),
    label: str | None = typer.Option(
        None,
        "--label",
        help="The label field (0/1 for repayment, a spend for clv). Leave it out for a features-only spec: "
        "a vertical party that does not hold the label.",
    ),
    home: Path | None = typer.Option(None, "--home", help="Partner home whose store holds the dataset."),
    dataset: str | None = typer.Option(None, "--dataset", help="Dataset in the store (with --home)."),
    schema: Path | None = typer.Option(None, "--schema", help="Or a schema YAML file (instead of --home)."),
    task: str = typer.Option("repayment", "--task", help="repayment or clv."),
    bound: list[str] = typer.Option(
        [], "--bound", help="FIELD=LO:HI public bounds the schema does not declare."
    ),
    drop: list[str] = typer.Option([], "--drop", help="Leave a field out of the model (repeatable)."),
    log: list[str] = typer.Option(
        [],
        "--log",
        help="Scale a heavy-tailed amount on a signed log (repeatable); bounds stay in the field's units.",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    from fedcustomer.data.feature_draft import parse_bound, spec_from_schema

    if output.exists() and not force:
        raise ConfigError(f"{output} exists; pass --force to overwrite it")
    the_schema = _schema(home, dataset, schema)
    bounds = dict(parse_bound(b) for b in bound)
    spec, notes = spec_from_schema(the_schema, task=task, label=label, bounds=bounds, drop=drop, log=log)
    atomic_write_text(output, json.dumps(spec.to_dict(), indent=2) + "\n")
    cats = sum(1 for f in spec.features if f not in spec.numeric)
    console.print(
        f"wrote {escape(str(output))}: "
        + (f"label {spec.label!r}" if spec.label is not None else "features only (no label)")
        + f", {len(spec.numeric)} numeric and {cats} categorical "
        f"feature(s), bounds and categories as declared in the schema of {the_schema.dataset!r}"
    )
    for note in notes:
        console.print(f"  {escape(note)}")


def _schema(home: Path | None, dataset: str | None, schema: Path | None):  # type: ignore[no-untyped-def]
    from fedcustomer.data.schema import Schema

    if schema is not None:
        if home is not None:
            raise ConfigError("give either --schema FILE or --home HOME --dataset NAME, not both")
        return Schema.load(schema)
    if home is None or dataset is None:
        raise ConfigError(
            "name the dataset: --home HOME --dataset NAME (its store's schema), or --schema FILE"
        )
    from fedcustomer.data.store import dataset_schema
    from fedcustomer.partner.home import PartnerHome

    return dataset_schema(PartnerHome(home), dataset)
