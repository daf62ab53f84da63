"""Identity keys for in-process CLI tests: one key file per person, registered in a home.

``run`` (see :mod:`tests.cli.cli_runner`) calls ``main()`` in this process, so the
passphrase comes from the environment the test sets with :func:`use_passphrase`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcustomer.data.people_admin import PeopleAdmin
from fedcustomer.data.store import PartnerStore
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.person_keys import PASSPHRASE_ENV
from tests.people import CAST, PASSPHRASE, Person, make_person


def use_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every encrypted key of :mod:`tests.people` opens; no identity comes from the environment."""
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    monkeypatch.delenv("FEDCUSTOMER_IDENTITY", raising=False)


def cast_keys(keys_dir: Path, cast: dict[str, str] | None = None) -> dict[str, Person]:
    """Each person's own key file, made like `fedcustomer people keygen` makes it."""
    return {n: make_person(keys_dir, n, r) for n, r in (CAST if cast is None else cast).items()}


def as_(person: Person) -> list[str]:
    """The command-line options that make ``person`` the one who acts."""
    return ["--identity", str(person.key_file)]


def register(home: Path, people: dict[str, Person], admin: str = "alice") -> None:
    """Register everyone but ``admin`` (who created the home) in the home's people registry."""
    with PartnerStore.open(PartnerHome(home)) as store:
        for person in people.values():
            if person.name != admin:
                PeopleAdmin(store).add(
                    people[admin].signer, person.signer.public_key, person.name, person.role
                )


def governed_home(
    root: Path, monkeypatch: pytest.MonkeyPatch, name: str = "bank"
) -> tuple[PartnerHome, dict[str, Person]]:
    """A closed partner home with the :data:`tests.people.CAST` registered (``alice`` its admin); keys open."""
    from tests.people import people_home

    use_passphrase(monkeypatch)
    store, people = people_home(root, name)
    store.close()
    return PartnerHome(root / name), people
