"""The two parties' data: column split, provisioning, PSI alignment, aligned tables.

Each party keeps its columns in its own governed store and reads them through
``PartnerStore.read`` as ``training_pipeline`` (audited, features/labels only). The
shared customers come from a private set intersection; each party keeps the result as
its *own pseudonyms* in the common canonical order (``state/vertical/``), so no raw
customer id is kept outside the store and rows line up by position across parties.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedcustomer.common.files import atomic_write_text
from fedcustomer.data.features import FeatureSpec
from fedcustomer.data.provision import provision_partner
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import ConfigError, DataError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.crypto.pseudonym import Pseudonymizer
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.vertical.job import VerticalJob

ACTIVE, PASSIVE = "active", "passive"
OWN = "own"  # each party's own dataset and feature spec, declared in its home (vertical.declaration)
# UCI credit split by columns: the bank sees the card account, the retailer the rest.
UCI_BANK = ["limit_bal", "pay_0", "pay_2", "pay_3", "pay_4", "pay_5", "pay_6"]
UCI_RETAILER = [
    "sex",
    "education",
    "marriage",
    "age",
    *[f"bill_amt{i}" for i in range(1, 7)],
    *[f"pay_amt{i}" for i in range(1, 7)],
]


@dataclass(frozen=True)
class PartyPlan:
    """One party of a vertical job: who it is, what it reads, and under which dataset/budget."""

    name: str
    role: str  # "active" (holds the label and the top model) or "passive"
    dataset: str
    # Its feature columns (the label is read only by the active party); None: the party's own,
    # declared in its home, which the coordinator never sees.
    spec: FeatureSpec | None
    source: str
    provision_task: str


@dataclass
class PartyTable:
    """A party's aligned rows: row i is the i-th shared customer in the canonical order."""

    X: np.ndarray
    y: np.ndarray | None


def plan_parties(
    job: VerticalJob, declared: dict[str, dict[str, Any]] | None = None
) -> tuple[PartyPlan, PartyPlan]:
    """(active, passive): the label owner is the bank for repayment, the retailer for CLV.

    With ``--data own`` the parties say it themselves: ``declared`` maps each connected
    partner to what its hello says of its declaration (``vertical.declaration.public_view``).
    """
    if job.data == OWN:
        return _declared_plans(job, declared)
    if job.data == "uci-credit":
        from fedcustomer.data.uci_credit import UCI_SPEC

        by_name = {f.name: f for f in UCI_SPEC.features}
        bank = FeatureSpec("repayment", "default", "id", [by_name[c] for c in UCI_BANK])
        retail = FeatureSpec("repayment", "default", "id", [by_name[c] for c in UCI_RETAILER])
        return (
            PartyPlan("bank", ACTIVE, "uci_credit", bank, "uci-credit", "repayment"),
            PartyPlan("retailer", PASSIVE, "uci_credit", retail, "uci-credit", "repayment"),
        )
    from fedcustomer.data.synthetic import CLV_SPEC, REPAYMENT_SPEC

    bank = PartyPlan(
        "bank",
        ACTIVE if job.task == "repayment" else PASSIVE,
        "bank",
        REPAYMENT_SPEC,
        "synthetic",
        "repayment",
    )
    retail = PartyPlan(
        "retailer", ACTIVE if job.task == "clv" else PASSIVE, "retailer", CLV_SPEC, "synthetic", "clv"
    )
    return (bank, retail) if job.task == "repayment" else (retail, bank)


def _declared_plans(
    job: VerticalJob, declared: dict[str, dict[str, Any]] | None
) -> tuple[PartyPlan, PartyPlan]:
    """The two parties that declared their own data; ConfigError saying what is missing or doubled."""
    if declared is None:
        raise ConfigError("--data own: the parties' declarations are needed (ask their nodes first)")
    problems = [f"{name}: {d['problem']}" for name, d in declared.items() if d.get("problem")]
    if problems:
        raise ConfigError("; ".join(problems))
    ready = {name: d for name, d in declared.items() if d.get("declared")}
    how = (
        "each party declares its own dataset and feature spec with `fedcustomer node setup --home HOME "
        "--mode vertical --dataset NAME --feature-spec FILE` (--label-owner on the one that holds the label)"
    )
    if len(ready) != 2:
        raise ConfigError(
            f"--data own needs two parties that declared their own data; {len(ready)} did"
            + (f" ({', '.join(sorted(ready))})" if ready else "")
            + f": {how}"
        )
    owners = sorted(name for name, d in ready.items() if d.get("label-owner"))
    if len(owners) != 1:
        raise ConfigError(
            f"exactly one party must hold the label; {'both' if owners else 'neither'} of "
            f"{', '.join(sorted(ready))} declared itself the label owner. The label owner declares a spec "
            "with its label column and --label-owner; the other party declares features only"
        )
    owner = owners[0]
    passive = next(name for name in ready if name != owner)
    task = str(ready[owner].get("task"))
    if task != job.task:
        raise ConfigError(
            f"the label owner {owner!r} declared a {task} spec, but the job's --task is {job.task!r}"
        )
    return (
        PartyPlan(owner, ACTIVE, str(ready[owner]["dataset"]), None, OWN, job.task),
        PartyPlan(passive, PASSIVE, str(ready[passive]["dataset"]), None, OWN, job.task),
    )


def party_frames(job: VerticalJob) -> dict[str, pd.DataFrame]:
    """Each party's full table (id, features, its own labels), as its admin would ingest it."""
    if job.data == "uci-credit":
        from fedcustomer.data.uci_credit import load_uci_credit

        data_dir = job.data_dir or os.environ.get("FEDCUSTOMER_DATA_DIR")
        if not data_dir:
            raise DataError(
                "--data uci-credit needs --data-dir or FEDCUSTOMER_DATA_DIR pointing at the data directory"
            )
        frame = load_uci_credit(Path(data_dir))
        frame["id"] = frame["id"].astype(str)
        rng = np.random.default_rng(job.seed)
        # The retailer knows only a share of the bank's card holders (and people the bank does not know).
        shared = rng.random(len(frame)) < job.shared_fraction
        retail = frame.loc[shared, ["id", *UCI_RETAILER]].reset_index(drop=True)
        bank = frame[["id", *UCI_BANK, "default"]]
        return {"bank": bank, "retailer": retail}
    from fedcustomer.data.synthetic import generate_federation

    fed = generate_federation(
        n_banks=1,
        n_retailers=1,
        customers_per_bank=job.customers,
        customers_per_retailer=job.customers,
        shared_fraction=job.shared_fraction,
        seed=job.seed,
        retail_signal=job.retail_signal,
    )
    bank, retail = fed.banks[0], fed.retailers[0]
    return {
        "bank": pd.concat([bank.train, bank.test], ignore_index=True),
        "retailer": pd.concat([retail.train, retail.test], ignore_index=True),
    }


def provision_party(root: Path, plan: PartyPlan, frame: pd.DataFrame, budget: DatasetBudget) -> PartnerHome:
    """A partner home with the party's rows ingested into its governed store (a preset's party)."""
    if plan.spec is None:
        raise ConfigError(f"party {plan.name!r} trains on its own declared data: nothing to provision")
    home, _ = provision_partner(
        root,
        plan.name,
        source=plan.source,
        task=plan.provision_task,
        spec=plan.spec,
        train=frame,
        test=frame.iloc[:0],
        budget=budget,
    )
    return home


# ------------------------------------------------------------------------------ PSI
def private_intersection(ids_a: list[str], ids_b: list[str]) -> tuple[list[str], list[str], int]:
    """Each side's own ids of the shared customers, in one common canonical order (PSI, in process).

    For callers that hold both id lists in one process (tests, tools); partner runs use
    the messaged exchange (:func:`fedcustomer.vertical.runner.align_by_psi`).
    """
    from fedcustomer.psi.core import run_psi_local

    res_a, res_b = run_psi_local(list(ids_a), list(ids_b))
    return list(res_a.local_ids), list(res_b.local_ids), int(res_a.size)


def alignment_path(home: PartnerHome, dataset: str, peer: str) -> Path:
    return home.state_dir / "vertical" / f"alignment-{_safe(dataset)}-with-{_safe(peer)}.json"


def save_alignment(home: PartnerHome, dataset: str, peer: str, local_ids: list[str]) -> Path:
    """Keep the PSI result as this party's own pseudonyms (never the raw ids)."""
    return save_pseudonym_alignment(
        home, dataset, peer, Pseudonymizer.open(home.keys_dir).pseudonyms(local_ids)
    )


def save_pseudonym_alignment(
    home: PartnerHome, dataset: str, peer: str, pseudonyms: list[str], seed: int | None = None
) -> Path:
    """Keep an alignment already expressed in this party's pseudonyms (what the messaged PSI leaves).

    ``seed`` is the one the held-out split over this order is drawn with.
    """
    path = alignment_path(home, dataset, peer)
    doc = {"dataset": dataset, "peer": peer, "pseudonyms": pseudonyms, "seed": seed}
    return atomic_write_text(path, json.dumps(doc) + "\n", mode=0o600, exact=True)


def load_party_table(
    home: PartnerHome, name: str, dataset: str, peer: str, spec: FeatureSpec, with_label: bool
) -> PartyTable:
    """Read the party's aligned rows through its governed store (one audited read)."""
    path = alignment_path(home, dataset, peer)
    if not path.exists():
        raise DataError(
            f"partner {name!r} has no PSI alignment with {peer!r} for dataset {dataset!r} ({path}); "
            "run the private set intersection first"
        )
    pseudonyms = json.loads(path.read_text(encoding="utf-8"))["pseudonyms"]
    if not pseudonyms:
        raise DataError(
            f"partner {name!r} shares no customers with {peer!r}; vertical training needs an overlap"
        )
    fields = [f.name for f in spec.features] + ([spec.label] if with_label else [])
    with PartnerStore.open(home) as store:
        spec.check_against(store.schema(dataset), name, with_label=with_label)
        frame = store.read(
            store.service_credential(f"node:{name}", "training_pipeline"),
            "training",
            fields=fields,
            dataset=dataset,
        )
    missing = int((~pd.Index(pseudonyms).isin(frame.index)).sum())
    if missing:
        raise DataError(
            f"partner {name!r}: {missing} aligned customer(s) are not in dataset {dataset!r} "
            "(erased or quarantined since the PSI); run the PSI again"
        )
    aligned = frame.loc[pseudonyms]
    if with_label:
        X, y = spec.transform(aligned)
        return PartyTable(X, y)
    return PartyTable(spec.transform_features(aligned), None)


def split_positions(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions in the aligned order; both parties derive the same split."""
    perm = np.random.default_rng([seed, 7177]).permutation(n)
    n_test = max(1, int(round(n * test_fraction))) if n > 1 else 0
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
