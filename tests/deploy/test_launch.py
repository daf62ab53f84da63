"""Command lines, run config and the deployed ServerApp's setup, without starting processes."""

from __future__ import annotations

import json

import pytest
import tomli

from fedcustomer.clients.node import TrainOutcome
from fedcustomer.clients.round_audit import record_round, update_size
from fedcustomer.data.synthetic import CLV_SPEC, REPAYMENT_SPEC
from fedcustomer.deploy.coordinator import CoordinatorDir, run_config_for, superlink_command, write_app
from fedcustomer.deploy.flower import parse_address
from fedcustomer.deploy.node import (
    DEFAULT_CLIENTAPP,
    check_clientapp,
    supernode_command,
    warm_node_command,
    write_runtime_secret,
)
from fedcustomer.deploy.pki import Certificates, make_dev_certificates, make_node_keys
from fedcustomer.errors import ConfigError, FederationError, KeyMaterialError
from fedcustomer.jobs.train_message import TrainInstructions
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.writer import AuditLog
from fedcustomer.server.deployment import deployment_setup, resolve_spec, split_run_config, wait_for_partners
from fedcustomer.server.job import JobConfig


class FakeGrid:
    def __init__(self, counts):
        self.counts = list(counts)

    def get_node_ids(self):
        n = self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]
        return list(range(n))


def test_superlink_runs_with_tls_and_node_auth_by_default(tmp_path):
    certs = make_dev_certificates(tmp_path / "c")
    cmd = superlink_command(CoordinatorDir(tmp_path), host="0.0.0.0", port=9093, certs=certs)
    assert "--enable-supernode-auth" in cmd and "--insecure" not in cmd
    assert cmd[cmd.index("--ssl-certfile") + 1] == str(certs.server_cert)
    assert cmd[cmd.index("--ssl-ca-certfile") + 1] == str(certs.ca_cert)


def test_insecure_superlink_is_explicit_and_cannot_claim_node_auth(tmp_path):
    with pytest.raises(ConfigError, match="TLS"):
        superlink_command(CoordinatorDir(tmp_path), host="127.0.0.1", port=1, certs=None, node_auth=True)
    cmd = superlink_command(CoordinatorDir(tmp_path), host="127.0.0.1", port=1, certs=None, node_auth=False)
    assert "--insecure" in cmd and "--enable-supernode-auth" not in cmd


def test_superlink_refuses_to_start_without_certificate_files(tmp_path):
    with pytest.raises(Exception, match="fedcustomer certs"):
        superlink_command(
            CoordinatorDir(tmp_path), host="h", port=1, certs=Certificates.in_dir(tmp_path / "none")
        )


def test_supernode_command_names_the_home_ca_and_key(tmp_path):
    home = PartnerHome.create(tmp_path / "bank0", "bank0")
    keys = make_node_keys(home.keys_dir)
    certs = make_dev_certificates(tmp_path / "c")
    cmd = supernode_command(
        home.root,
        superlink="127.0.0.1:9093",
        root_cert=certs.ca_cert,
        auth_key=keys.private_key,
        runtime_port=9101,
    )
    assert cmd[cmd.index("--node-config") + 1] == f'partner-home="{home.root.resolve()}"'
    assert cmd[cmd.index("--root-certificates") + 1] == str(certs.ca_cert.resolve())
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(keys.private_key.resolve())
    assert "--insecure" not in cmd


def test_warm_node_runs_the_supernode_in_process_isolation_with_a_signed_task_poll(tmp_path):
    home = PartnerHome.create(tmp_path / "bank0", "bank0")
    common = {"superlink": "127.0.0.1:9093", "root_cert": None, "auth_key": None, "insecure": True}
    plain = supernode_command(home.root, runtime_port=9101, **common, clientapp="subprocess")
    assert "--isolation" not in plain and "--superexec-auth-secret-file" not in plain
    secret = write_runtime_secret(home.root)
    warm = supernode_command(home.root, runtime_port=9101, **common, clientapp="warm", secret_file=secret)
    assert warm[warm.index("--isolation") + 1] == "process"
    assert warm[warm.index("--superexec-auth-secret-file") + 1] == str(secret.resolve())
    cmd = warm_node_command(warm, 9101, secret)
    assert cmd[1:3] == ["-m", "fedcustomer.deploy.node_supervisor"]
    assert cmd[cmd.index("--runtime-api-address") + 1] == "127.0.0.1:9101"
    assert cmd[cmd.index("--") + 1 :] == warm


def test_the_runtime_secret_is_fresh_random_and_private(tmp_path):
    home = PartnerHome.create(tmp_path / "bank0", "bank0")
    first = write_runtime_secret(home.root).read_bytes()
    path = write_runtime_secret(home.root)
    assert len(path.read_bytes()) == 32 and path.read_bytes() != first
    assert path.stat().st_mode & 0o777 == 0o600


def test_an_unknown_clientapp_mode_is_refused(tmp_path):
    home = PartnerHome.create(tmp_path / "bank0", "bank0")
    with pytest.raises(ConfigError, match="--clientapp must be warm or subprocess"):
        supernode_command(home.root, superlink="127.0.0.1:9093", root_cert=None, auth_key=None,
                          insecure=True, clientapp="threads")  # fmt: skip
    assert check_clientapp(DEFAULT_CLIENTAPP) in ("warm", "subprocess")


def test_supernode_refuses_missing_ca_or_non_home(tmp_path):
    home = PartnerHome.create(tmp_path / "bank0", "bank0")
    with pytest.raises(KeyMaterialError, match="CA certificate"):  # a missing key or certificate file: exit 8
        supernode_command(home.root, superlink="127.0.0.1:9093", root_cert=tmp_path / "nope", auth_key=None)
    with pytest.raises(ConfigError, match="not a partner home"):
        supernode_command(tmp_path, superlink="127.0.0.1:9093", root_cert=None, auth_key=None, insecure=True)


@pytest.mark.parametrize("bad", ["localhost", ":9093", "host:", "host:99999", "host:abc"])
def test_malformed_superlink_address_is_refused(bad):
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_address(bad)


def test_run_config_round_trips_to_the_same_job(tmp_path):
    job = JobConfig(rounds=2, partners=3, min_partners=2, out=str(tmp_path / "run"), round_timeout=7.0)
    cfg = run_config_for(job, feature_spec="synthetic:repayment", wait_for_partners=5)
    path = write_app(CoordinatorDir(tmp_path), cfg)
    app_cfg = tomli.loads(path.read_text())["tool"]["flwr"]["app"]
    assert app_cfg["components"]["serverapp"] == "fedcustomer.apps.server:app"
    back, extra = split_run_config(app_cfg["config"])
    assert back.to_dict() == job.to_dict() | {"out": str((tmp_path / "run").resolve())}
    assert extra["deployment"] is True and extra["feature-spec"] == "synthetic:repayment"


def test_secagg_job_uses_the_secagg_apps(tmp_path):
    cfg = run_config_for(JobConfig(out=str(tmp_path)), feature_spec="synthetic:repayment", secagg=True)
    app_cfg = tomli.loads(write_app(CoordinatorDir(tmp_path), cfg).read_text())["tool"]["flwr"]["app"]
    assert app_cfg["components"] == {
        "serverapp": "fedcustomer.apps.secagg:server_app",
        "clientapp": "fedcustomer.apps.secagg:client_app",
    }


def test_feature_spec_by_name_or_json_file(tmp_path):
    assert resolve_spec("synthetic:repayment") == REPAYMENT_SPEC
    assert resolve_spec("synthetic:clv") == CLV_SPEC
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(REPAYMENT_SPEC.to_dict()))
    assert resolve_spec(str(path)).to_dict() == REPAYMENT_SPEC.to_dict()
    path.write_text("{broken")
    with pytest.raises(ConfigError, match="not a feature spec"):
        resolve_spec(str(path))
    with pytest.raises(ConfigError, match="built-in"):
        resolve_spec("no-such-spec")


def test_deployed_server_waits_for_partners_and_never_prepares_data(tmp_path):
    job = JobConfig(partners=3, min_partners=2, out=str(tmp_path / "run"))
    raw = run_config_for(job, feature_spec="synthetic:repayment", wait_for_partners=5)
    got_job, spec, n, resume = deployment_setup(FakeGrid([0, 1, 3]), raw)
    assert (got_job.run_id, spec, n, resume) == (job.run_id, REPAYMENT_SPEC, 3, False)
    assert not (tmp_path / "run" / "partners").exists()


def test_too_few_partners_after_the_wait_is_a_clear_error():
    with pytest.raises(FederationError, match="only 1 partner node"):
        wait_for_partners(FakeGrid([1]), wanted=3, minimum=2, timeout=0.3, poll=0.05)
    assert wait_for_partners(FakeGrid([2]), wanted=3, minimum=2, timeout=0.2, poll=0.05) == 2


def _ins() -> TrainInstructions:
    return TrainInstructions(
        run_id="r1",
        round=2,
        planned_rounds=3,
        task="repayment",
        arch="mlp",
        dataset="bank",
        spec=REPAYMENT_SPEC,
    )


def test_every_round_is_audited_with_size_epsilon_and_refusal(tmp_path):
    import torch

    home = PartnerHome.create(tmp_path / "bank0", "bank0")
    state = {"w": torch.zeros(10, 4), "b": torch.zeros(4)}
    paid = TrainOutcome("bank0", state, {"epsilon-round": 0.5, "epsilon-total": 1.5, "epsilon-target": 3.0})
    refused = TrainOutcome("bank0", None, {"epsilon-total": 1.5}, refused_reason="would exceed the target")
    record_round(home, paid, _ins())
    record_round(home, refused, _ins())
    with AuditLog.open(home.audit_dir, keys_dir=home.keys_dir) as log:
        entries = log.query(action="fl_round")
        assert log.verify().ok
    assert [e.decision for e in entries] == ["allowed", "denied"]
    assert entries[0].details["update_bytes"] == update_size(state) == 44 * 4
    assert entries[0].details["epsilon_total"] == 1.5 and entries[0].details["round"] == 2
    assert entries[1].details["refused"] is True and entries[1].details["update_bytes"] == 0
    assert entries[1].reason == "would exceed the target"


def test_secagg_threshold_stays_below_the_share_count():
    from fedcustomer.apps.secagg import secagg_threshold

    assert secagg_threshold(3, 3) == 2
    assert secagg_threshold(5, 3) == 3
    assert secagg_threshold(4, 1) == 2
    with pytest.raises(ConfigError, match="at least 3"):
        secagg_threshold(2, 2)


def test_node_start_refuses_an_unknown_clientapp_mode_before_starting_anything(tmp_path, capsys):
    from tests.cli.cli_runner import run

    home = PartnerHome.create(tmp_path / "bank0", "bank0")
    argv = ["node", "start", "--partner", "bank0", "--home", str(home.root), "--superlink", "127.0.0.1:9"]
    code, _, err = run([*argv, "--insecure", "--clientapp", "threads"], capsys)
    assert code == ConfigError.exit_code and "--clientapp must be warm or subprocess" in err
    assert not (home.state_dir / "runtime-api.secret").exists()


def test_node_start_refuses_an_unknown_poll_mode_before_starting_anything(tmp_path, capsys):
    from tests.cli.cli_runner import run

    home = PartnerHome.create(tmp_path / "bank0", "bank0")
    argv = ["node", "start", "--partner", "bank0", "--home", str(home.root), "--superlink", "127.0.0.1:9"]
    code, _, err = run([*argv, "--insecure", "--poll", "fast"], capsys)
    assert code == ConfigError.exit_code and "--poll must be adaptive or flower" in err
    assert not (home.state_dir / "runtime-api.secret").exists()
