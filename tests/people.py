"""People with identity keys, for tests of homes that authenticate every governance request.

``people_home`` makes a partner home the way ``fedcustomer init`` does (first admin,
service keys, people registry) and registers the usual cast, each with a key file
encrypted with :data:`PASSPHRASE`. CLI tests export ``FEDCUSTOMER_PASSPHRASE`` (see
:func:`cli_env`) and pass ``--identity`` with the person's file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fedcustomer.data.people_admin import PeopleAdmin
from fedcustomer.data.store import PartnerStore
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.person_keys import PASSPHRASE_ENV, KeySigner, write_identity_file

PASSPHRASE = "correct horse battery staple"

CAST = {
    "alice": "partner_admin",
    "rick": "risk_officer",
    "carol": "compliance_officer",
    "cole": "compliance_officer",
    "mia": "marketing_analyst",
    "dana": "data_scientist",
}


@dataclass
class Person:
    name: str
    role: str
    signer: KeySigner
    key_file: Path


def make_person(keys_dir: Path, name: str, role: str) -> Person:
    """A person's own key pair, written like `fedcustomer people keygen` does."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    signer = KeySigner.generate()
    path = write_identity_file(keys_dir / f"{name}.key", signer, PASSPHRASE)
    return Person(name, role, signer, path)


def people_home(
    root: Path, name: str = "bank", cast: dict[str, str] | None = None
) -> tuple[PartnerStore, dict[str, Person]]:
    """An open store with a people registry: the first admin is ``alice``, the rest of ``cast`` added."""
    cast = dict(CAST if cast is None else cast)
    keys_dir = root / "people-keys"  # the people's own files, outside the partner home
    people = {n: make_person(keys_dir, n, r) for n, r in cast.items()}
    admin = people["alice"]
    store = PartnerStore.init(PartnerHome(root / name), name, admin=admin.signer, admin_name="alice")
    for person in people.values():
        if person.name != "alice":
            PeopleAdmin(store).add(admin.signer, person.signer.public_key, person.name, person.role)
    return store, people


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a CLI subprocess that reads identity keys of :func:`people_home`."""
    return {**os.environ, PASSPHRASE_ENV: PASSPHRASE, "OMP_NUM_THREADS": "1", **(extra or {})}
