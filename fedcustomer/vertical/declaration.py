"""A party's own columns for vertical jobs, declared in its home (``node setup --mode vertical``).

Which dataset of its governed store a party trains on, its confirmed feature spec and
whether it holds the label are the party's own metadata: they stay in its home
(``state/vertical/party.json``). The coordinator learns only what the protocol needs,
from the party's hello (:func:`public_view`): its dataset name (the PSI messages name it),
whether it holds the label and for which task, and the width of its encoded input.
Column names, bounds and categories never leave the party.

Every check runs when the party declares and again when a job reads the declaration (the
store may have changed since), before any row is read. Messages name fields, never values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, RecordDict

from fedcustomer.common.files import atomic_write_text
from fedcustomer.data.features import CategoricalFeature, FeatureSpec
from fedcustomer.data.schema import ROW_ID_FIELD, Schema
from fedcustomer.data.store import dataset_schema
from fedcustomer.errors import ConfigError, DataError, SchemaError
from fedcustomer.partner.home import PartnerHome

DECLARATION_VERSION = 1


@dataclass(frozen=True)
class PartyDeclaration:
    """What a party trains a vertical job on: its dataset, its feature spec, and whether it holds the label."""

    dataset: str
    spec: FeatureSpec
    label_owner: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": DECLARATION_VERSION,
            "dataset": self.dataset,
            "label_owner": self.label_owner,
            "feature_spec": self.spec.to_dict(),
        }

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> PartyDeclaration:
        if not isinstance(raw, dict) or raw.get("version") != DECLARATION_VERSION:
            raise ConfigError(f"{where}: not a vertical party declaration (version {DECLARATION_VERSION})")
        try:
            return cls(
                str(raw["dataset"]), FeatureSpec.from_dict(raw["feature_spec"]), bool(raw["label_owner"])
            )
        except KeyError as exc:
            raise ConfigError(f"{where}: the declaration lacks {exc.args[0]!r}") from None
        except SchemaError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def declaration_path(home: PartnerHome) -> Path:
    return home.state_dir / "vertical" / "party.json"


def check_declaration(home: PartnerHome, decl: PartyDeclaration) -> Schema:
    """Refuse a declaration the party's store cannot serve; the dataset's schema otherwise."""
    name = home.config().name
    spec = decl.spec
    if decl.label_owner and spec.label is None:
        raise ConfigError(
            f"partner {name!r} is declared as the label owner, but its feature spec names no label column; "
            "draft it with `fedcustomer features draft --label COLUMN`"
        )
    if not decl.label_owner and spec.label is not None:
        raise ConfigError(
            f"partner {name!r} does not hold the label, but its feature spec names label {spec.label!r}: a "
            "party that is not the label owner declares features only (draft the spec without --label), "
            "or pass --label-owner if this party holds the label"
        )
    schema = dataset_schema(home, decl.dataset)  # DataError naming the datasets it has
    if schema.id_field.name == ROW_ID_FIELD:
        raise DataError(
            f"dataset {decl.dataset!r} of partner {name!r} has no customer id column: its id was generated "
            "from each row (ingest --id-from-row), so no other party holds the same ids and the private set "
            "intersection cannot match customers. Ingest a file with the customer id both parties know"
        )
    spec.check_against(schema, name, with_label=decl.label_owner)  # columns present, typed, none core-tier
    observed = [
        f.name
        for f in spec.features
        if isinstance(f, CategoricalFeature) and schema.field(f.name).validation.observed_categories
    ]
    if observed:
        raise SchemaError(
            f"the feature spec reads field(s) {', '.join(observed)} of dataset {decl.dataset!r} at partner "
            f"{name!r}, whose category lists were observed in the data and never confirmed; review them, "
            "confirm with `fedcustomer schema confirm --schema FILE --field NAME`, ingest under the confirmed "
            "schema and draft the spec again"
        )
    return schema


def declare_party(home: PartnerHome, dataset: str, spec: FeatureSpec, *, label_owner: bool) -> Path:
    """Check the declaration against the party's store, then keep it in the home (nothing kept if refused)."""
    decl = PartyDeclaration(dataset, spec, label_owner)
    check_declaration(home, decl)
    path = declaration_path(home)
    return atomic_write_text(path, json.dumps(decl.to_dict(), indent=2) + "\n", mode=0o600, exact=True)


def load_declaration(home: PartnerHome) -> PartyDeclaration:
    """The party's declaration, checked again against its store; ConfigError saying how to make one."""
    path = declaration_path(home)
    if not path.exists():
        raise ConfigError(
            f"partner {home.config().name!r} has not declared its own data for vertical jobs; run "
            "`fedcustomer node setup --home HOME --mode vertical --dataset NAME --feature-spec FILE` "
            "(add --label-owner on the party that holds the label)"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable vertical party declaration ({type(exc).__name__})") from None
    decl = PartyDeclaration.from_dict(raw, str(path))
    check_declaration(home, decl)
    return decl


def own_spec(home: PartnerHome, dataset: str, label_owner: bool) -> FeatureSpec:
    """The spec a party declared for ``dataset``, for a job that gives it that role."""
    decl = load_declaration(home)
    name = home.config().name
    if decl.dataset != dataset:
        raise ConfigError(
            f"the job asks partner {name!r} for dataset {dataset!r}, but it declared {decl.dataset!r} for "
            "vertical jobs; declare again with `fedcustomer node setup --mode vertical`"
        )
    if decl.label_owner != label_owner:
        held = "holds" if decl.label_owner else "does not hold"
        raise ConfigError(
            f"the job gives partner {name!r} the {'label owner' if label_owner else 'feature-only'} role, but "
            f"it declared that it {held} the label"
        )
    return decl.spec


def public_view(decl: PartyDeclaration) -> dict[str, Any]:
    """What the coordinator may learn of a declaration: no column name, bound or category."""
    return {
        "declared": True,
        "dataset": decl.dataset,
        "label-owner": decl.label_owner,
        "task": decl.spec.task,
        "input-width": decl.spec.input_dim,
    }


def hello_content(home: PartnerHome) -> RecordDict:
    """A party's hello: its name, and the public view of its declaration if it made one.

    A declaration that no longer fits the store (erased dataset, changed schema) is reported
    as such, without its details (they name the party's columns): the party's own
    ``node setup`` says why.
    """
    content = RecordDict({"partner": ConfigRecord({"name": home.config().name})})
    if declaration_path(home).exists():
        try:
            view: dict[str, Any] = public_view(load_declaration(home))
        except (ConfigError, DataError):
            view = {
                "declared": False,
                "problem": "its vertical declaration no longer fits its store; run `fedcustomer node setup "
                "--mode vertical` there again to see why",
            }
        content["declared"] = ConfigRecord(view)
    return content


def own_party_homes(homes: str | None) -> dict[str, PartnerHome]:
    """The two party homes under ``homes`` (a one-machine job on their own data), by partner name."""
    if not homes:
        raise ConfigError(
            "--data own needs --homes DIR: the directory holding both parties' homes, each made with "
            "`fedcustomer init` and `ingest` and declared with `fedcustomer node setup --mode vertical`"
        )
    root = Path(homes)
    if not root.is_dir():
        raise ConfigError(f"--homes {root} is not a directory of partner homes")
    found = [PartnerHome(p) for p in sorted(root.iterdir()) if (p / "partner.toml").is_file()]
    if len(found) != 2:
        raise ConfigError(
            f"--data own needs exactly two party homes in {root}; it holds {len(found)}"
            + (f" ({', '.join(h.root.name for h in found)})" if found else "")
        )
    by_name = {h.config().name: h for h in found}
    if len(by_name) != 2:
        raise ConfigError(
            f"both homes in {root} are partner {found[0].config().name!r}; each party needs its own name"
        )
    return by_name
