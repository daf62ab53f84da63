"""The two-party commands without Flower: a party's home and keys, pinning, and clear refusals."""

from __future__ import annotations

from fedcustomer.partner.home import PartnerHome
from fedcustomer.psi.signing import pinned_key
from tests.cli.cli_runner import run


def test_a_party_prepares_its_home_makes_its_keys_and_pins_its_peer(tmp_path, capsys):
    for party in ("bank", "retailer"):
        code, out, err = run(
            [
                "node",
                "prepare",
                "--mode",
                "vertical",
                "--home",
                str(tmp_path / party),
                "--partner",
                party,
                "--customers",
                "300",
            ],
            capsys,
        )
        assert code == 0, err
        code, out, err = run(["node", "keys", "--home", str(tmp_path / party)], capsys)
        assert code == 0 and "link key" in out
    pub = tmp_path / "retailer" / "keys" / "service_linkage.pem.pub"
    code, out, err = run(
        ["node", "pin-peer", str(pub), "--home", str(tmp_path / "bank"), "--peer", "retailer"], capsys
    )
    assert code == 0 and "pinned retailer" in out
    assert pinned_key(PartnerHome(tmp_path / "bank"), "retailer") is not None


def test_bad_two_party_options_are_clear_errors(tmp_path, capsys):
    code, _, err = run(
        ["node", "prepare", "--mode", "vertical", "--home", str(tmp_path / "x"), "--partner", "bank0"], capsys
    )
    assert code != 0 and "--partner must be one of bank, retailer" in err
    code, _, err = run(["node", "prepare", "--home", str(tmp_path / "y"), "--partner", "bank0"], capsys)
    assert code != 0 and "--index is required" in err
    code, _, err = run(["coordinator", "run", "--workdir", str(tmp_path / "c"), "--mode", "sideways"], capsys)
    assert code != 0 and "--mode must be" in err
    code, _, err = run(
        ["coordinator", "run", "--workdir", str(tmp_path / "c"), "--mode", "vertical", "--reveal", "count"],
        capsys,
    )
    assert code != 0 and "count only with --mode psi" in err
    code, _, err = run(
        ["coordinator", "run", "--workdir", str(tmp_path / "c"), "--mode", "psi", "--count-epsilon", "1"],
        capsys,
    )
    assert code != 0 and "--count-epsilon needs --reveal count" in err
    bad = tmp_path / "bad.pub"
    bad.write_text("no key")
    home = tmp_path / "h"
    run(
        [
            "node",
            "prepare",
            "--mode",
            "vertical",
            "--home",
            str(home),
            "--partner",
            "bank",
            "--customers",
            "200",
        ],
        capsys,
    )
    code, _, err = run(["node", "pin-peer", str(bad), "--home", str(home), "--peer", "retailer"], capsys)
    assert code != 0 and "not a PEM public key" in err
