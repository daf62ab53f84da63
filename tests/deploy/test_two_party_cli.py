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


def test_a_node_that_cannot_join_says_what_to_check(tmp_path, capsys, monkeypatch):
    """Flower reports a wrong CA and an unregistered node key with the same exit code; the node names both fixes."""
    import fedcustomer.deploy.node as node_module

    home = tmp_path / "bank"
    code, _, err = run(
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
            "300",
        ],
        capsys,
    )
    assert code == 0, err
    assert run(["node", "keys", "--home", str(home)], capsys)[0] == 0
    monkeypatch.setattr(node_module, "run_warm_node", lambda *args, **kwargs: 1)
    cert = tmp_path / "ca.crt"
    cert.write_text("not used: the SuperNode is replaced here\n")
    code, _, err = run(
        [
            "node",
            "start",
            "--partner",
            "bank",
            "--home",
            str(home),
            "--superlink",
            "127.0.0.1:9",
            "--root-cert",
            str(cert),
        ],
        capsys,
    )
    assert code == 9
    text = " ".join(err.split())
    assert "exited with code 1" in text
    assert f"--root-cert {cert}" in text and "CERTIFICATE_VERIFY_FAILED" in text
    assert "fedcustomer coordinator register" in text and "supernode.pub" in text and "--name bank" in text
    assert "127.0.0.1:9" in text


def test_coordinator_run_passes_data_own_to_the_serverapp_and_refuses_other_sources(tmp_path, capsys):
    """`--data own` reaches the two-party run config (the ServerApp then asks each party what it declared)."""
    import json

    from fedcustomer.deploy.coordinator import CoordinatorDir

    workdir = tmp_path / "c"
    argv = ["coordinator", "run", "--workdir", str(workdir), "--mode", "vertical", "--wait", "0.1"]
    code, _, err = run([*argv, "--data", "own", "--out", str(tmp_path / "run")], capsys)
    assert code != 0  # no coordinator is running; the job was written first
    cfg = json.loads(CoordinatorDir(workdir).job_path.read_text(encoding="utf-8"))
    assert cfg["mode"] == "vertical" and cfg["data"] == "own" and "feature-spec" not in cfg
    code, _, err = run([*argv, "--data", "cdnow"], capsys)
    assert code != 0 and "--data must be one of synthetic, uci-credit, own for vertical runs" in " ".join(
        err.split()
    )


def test_node_setup_refuses_a_mode_it_has_no_use_for_and_a_folder_that_is_no_home(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text("{}")
    base = ["node", "setup", "--dataset", "cards", "--feature-spec", str(spec)]
    code, _, err = run([*base, "--home", str(tmp_path), "--mode", "horizontal"], capsys)
    assert code != 0 and "--mode must be vertical" in err
    code, _, err = run([*base, "--home", str(tmp_path / "nohome")], capsys)
    assert code != 0 and "is not a partner home (no partner.toml)" in " ".join(err.split())
