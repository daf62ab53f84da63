"""The two-party commands without Flower: a party's home and keys, pinning, and clear refusals."""

from __future__ import annotations

from fedcustomer.deploy.two_party import demo_admin_key_path
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.writer import AuditLog
from fedcustomer.psi.signing import pinned_key
from tests.cli.cli_runner import run
from tests.cli.identities import use_passphrase


def _admin(home, partner=None):
    """The demo partner admin's identity option that `node prepare --mode vertical` made for ``home``."""
    return ["--identity", str(demo_admin_key_path(PartnerHome(home), partner or home.name))]


def test_a_party_prepares_its_home_makes_its_keys_and_pins_its_peer(tmp_path, capsys, monkeypatch):
    use_passphrase(monkeypatch)
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
        key = demo_admin_key_path(PartnerHome(tmp_path / party), party)
        assert f"'{party}-admin' registered" in out and str(key) in " ".join(out.split()).replace(" ", "")
        code, _, err = run(["node", "keys", "--home", str(tmp_path / party)], capsys)
        assert code != 0 and "--identity" in err  # the demo home has people: keys are a signed act
        code, out, err = run(
            ["node", "keys", "--home", str(tmp_path / party), *_admin(tmp_path / party)], capsys
        )
        assert code == 0 and "link key" in out, err
    pub = tmp_path / "retailer" / "keys" / "service_linkage.pem.pub"
    pin = ["node", "pin-peer", str(pub), "--home", str(tmp_path / "bank"), "--peer", "retailer"]
    code, out, err = run(pin, capsys)
    assert (
        code != 0 and "--identity" in err and pinned_key(PartnerHome(tmp_path / "bank"), "retailer") is None
    )
    code, out, err = run([*pin, *_admin(tmp_path / "bank")], capsys)
    assert code == 0 and "pinned retailer" in out, err
    assert pinned_key(PartnerHome(tmp_path / "bank"), "retailer") is not None
    pinned = [e for e in AuditLog(PartnerHome(tmp_path / "bank").audit_dir) if e.action == "peer_pin"]
    assert [(e.actor, e.decision) for e in pinned] == [("bank-admin", "allowed")]


def test_a_demo_home_needs_a_passphrase_for_its_admin_key(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FEDCUSTOMER_PASSPHRASE", raising=False)
    argv = ["node", "prepare", "--mode", "vertical", "--home", str(tmp_path / "bank"), "--partner", "bank"]
    code, _, err = run([*argv, "--customers", "200"], capsys)
    assert code != 0 and "FEDCUSTOMER_PASSPHRASE" in err and not (tmp_path / "bank").exists()


def test_bad_two_party_options_are_clear_errors(tmp_path, capsys, monkeypatch):
    use_passphrase(monkeypatch)
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
    code, _, err = run(
        ["node", "pin-peer", str(bad), "--home", str(home), "--peer", "retailer", *_admin(home, "bank")],
        capsys,
    )
    assert code != 0 and "not a PEM public key" in err


def test_a_node_that_cannot_join_says_what_to_check(tmp_path, capsys, monkeypatch):
    """Flower reports a wrong CA and an unregistered node key with the same exit code; the node names both fixes."""
    import fedcustomer.deploy.node as node_module

    use_passphrase(monkeypatch)
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
    assert run(["node", "keys", "--home", str(home), *_admin(home)], capsys)[0] == 0
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
    key = tmp_path / "nobody.key"  # never read: both refusals come before the identity is loaded
    base = ["node", "setup", "--dataset", "cards", "--feature-spec", str(spec), "--identity", str(key)]
    code, _, err = run([*base, "--home", str(tmp_path), "--mode", "horizontal"], capsys)
    assert code != 0 and "--mode must be vertical" in err
    code, _, err = run([*base, "--home", str(tmp_path / "nohome")], capsys)
    assert code != 0 and "is not a partner home (no partner.toml)" in " ".join(err.split())
