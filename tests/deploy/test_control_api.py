"""Submitting a job from the coordinator's process through Flower's Control API, on a real SuperLink over TLS.

The SuperLink here runs in process isolation with no executor beside it, so a submitted run stays pending:
what is tested is the submission (run id, run config, the bundle and its cache), the status it reports (the
same record `flwr ls` prints) and the errors, not the job. Flower's internals the coordinator uses are pinned
at the end: an upgrade that moves or changes them fails here, not in a deployment.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import subprocess
from pathlib import Path

import pytest

from fedcustomer.deploy import control_api as ca
from fedcustomer.deploy import coordinator as co
from fedcustomer.deploy import flower as fl
from fedcustomer.deploy.pki import make_dev_certificates
from fedcustomer.deploy.two_party import two_party_run_config
from fedcustomer.errors import ConfigError, FederationError
from fedcustomer.vertical.job import VerticalJob


def _write_job(cdir: co.CoordinatorDir, out: Path, seed: int = 0) -> dict:
    raw = two_party_run_config(VerticalJob(out=str(out), seed=seed), mode="vertical", wait_for_partners=5)
    co.write_app(cdir, raw)
    return raw


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (what a failed command must leave as it was)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def link(tmp_path_factory):
    """A SuperLink with TLS on 127.0.0.1 whose runs stay pending (process isolation, no executor)."""
    root = tmp_path_factory.mktemp("control")
    certs = make_dev_certificates(root / "certs")
    cdir = co.CoordinatorDir(root / "coord")
    port = fl.free_port()
    cmd = co.superlink_command(cdir, host="127.0.0.1", port=port, certs=certs, serverapp=co.WARM)
    co.write_runtime_secret(cdir)
    co.write_flwr_config(cdir, f"127.0.0.1:{port}", certs.ca_cert)
    proc = fl.start(cmd, cdir.log_path, fl.flower_env(cdir.flwr_home), cwd=cdir.root)
    try:
        co.wait_until_up(cdir, proc, timeout=600)
        yield cdir, root, certs
    finally:
        fl.stop(proc)


@pytest.fixture(autouse=True)
def _in_process(monkeypatch):
    monkeypatch.delenv(ca.SUBMIT_ENV, raising=False)


def test_a_job_is_submitted_in_process_and_listed_as_flwr_ls_lists_it(link, tmp_path):
    cdir, _root, _certs = link
    _write_job(cdir, tmp_path / "run")
    run_id = co.submit_run(cdir)
    assert isinstance(run_id, int) and run_id > 0
    mine = co.run_status(cdir, run_id)
    assert mine["run-id"] == str(run_id) and mine["status"].startswith("pending")
    theirs = fl.flwr_cli(["ls", fl.CONNECTION, "--run-id", str(run_id)], cdir.flwr_home)["runs"][0]
    assert set(mine) == set(theirs)
    assert {k: mine[k] for k in ("run-id", "fab-id", "fab-hash", "status")} == {
        k: theirs[k] for k in ("run-id", "fab-id", "fab-hash", "status")
    }
    # the bundle sent is the one Flower's CLI builds and names by its hash
    cached = sorted(cdir.fab_cache.glob(f"*{ca.FAB_SUFFIX}"))
    assert len(cached) == 1
    assert hashlib.sha256(cached[0].read_bytes()).hexdigest().startswith(mine["fab-hash"])


def _override_config(cdir: co.CoordinatorDir, run_id: int) -> dict:
    from flwr.common.serde import run_from_proto
    from flwr.proto.control_pb2 import ListRunsRequest

    with ca.control_client(cdir.flwr_home, "flwr ls") as (client, _conn):
        res = client.ListRuns(ListRunsRequest(run_id=run_id))
    return dict(run_from_proto(res.run_dict[run_id]).override_config)


def test_resume_is_the_run_config_override_flwr_run_sends(link, tmp_path):
    cdir, _root, _certs = link
    _write_job(cdir, tmp_path / "run")
    assert _override_config(cdir, co.submit_run(cdir)) == {}
    assert _override_config(cdir, co.submit_run(cdir, resume=True)) == {"resume": True}


def test_the_bundle_is_built_once_per_app_content_and_rebuilt_when_the_app_changes(
    link, tmp_path, monkeypatch
):
    import flwr.cli.build

    cdir, _root, _certs = link
    builds: list[Path] = []
    real = flwr.cli.build.build_fab_from_disk
    monkeypatch.setattr(flwr.cli.build, "build_fab_from_disk", lambda app: builds.append(app) or real(app))
    _write_job(cdir, tmp_path / "run-a")
    first = co.submit_run(cdir)
    second = co.submit_run(cdir)
    assert len(builds) == 1  # unchanged app: the cached bundle was sent again
    assert co.run_status(cdir, first)["fab-hash"] == co.run_status(cdir, second)["fab-hash"]
    _write_job(cdir, tmp_path / "run-b", seed=1)  # a new job: a new config, so a new bundle
    third = co.submit_run(cdir)
    assert len(builds) == 2
    assert co.run_status(cdir, third)["fab-hash"] != co.run_status(cdir, first)["fab-hash"]
    assert len(list(cdir.fab_cache.glob(f"*{ca.FAB_SUFFIX}"))) == 1  # only the latest bundle is kept
    # a damaged cached bundle is rebuilt, not sent
    (cached,) = cdir.fab_cache.glob(f"*{ca.FAB_SUFFIX}")
    cached.write_bytes(b"not a bundle")
    co.submit_run(cdir)
    assert len(builds) == 3 and cached.read_bytes() != b"not a bundle"


def test_a_superlink_that_is_down_is_a_clear_error_and_nothing_is_written(tmp_path):
    certs = make_dev_certificates(tmp_path / "certs")
    cdir = co.CoordinatorDir(tmp_path / "coord")
    co.write_flwr_config(cdir, f"127.0.0.1:{fl.free_port()}", certs.ca_cert)
    _write_job(cdir, tmp_path / "run")
    before = _snapshot(cdir.root)
    with pytest.raises(
        FederationError, match="flwr run .* failed: Connection to the SuperLink is unavailable"
    ):
        co.submit_run(cdir)
    with pytest.raises(FederationError, match="Connection to the SuperLink is unavailable"):
        co.run_status(cdir, 1)
    assert _snapshot(cdir.root) == before  # no bundle cached, job and config untouched


def test_a_superlink_with_a_certificate_from_another_ca_is_refused(link, tmp_path):
    cdir, _root, _certs = link
    other = make_dev_certificates(tmp_path / "other-ca")
    mine = co.CoordinatorDir(tmp_path / "coord")
    address = (cdir.flwr_home / "config.toml").read_text().split('address = "')[1].split('"')[0]
    co.write_flwr_config(mine, address, other.ca_cert)
    _write_job(mine, tmp_path / "run")
    before = _snapshot(mine.root)
    with pytest.raises(FederationError, match="failed: Connection to the SuperLink is unavailable") as err:
        co.submit_run(mine)
    assert "customer" not in str(err.value).lower()
    assert _snapshot(mine.root) == before


def test_a_coordinator_without_flower_config_says_so(tmp_path):
    cdir = co.CoordinatorDir(tmp_path / "coord")
    _write_job(cdir, tmp_path / "run")
    with pytest.raises(FederationError, match="no Flower CLI config .* start the coordinator first"):
        co.submit_run(cdir)


def test_an_invalid_app_is_refused_with_flowers_reason_before_any_request(tmp_path):
    cdir = co.CoordinatorDir(tmp_path / "coord")
    _write_job(cdir, tmp_path / "run")
    (cdir.app_dir / "pyproject.toml").write_text('[project]\nname = "x"\n')
    with pytest.raises(FederationError, match="Invalid Flower App configuration"):
        co.submit_run(cdir)
    assert not cdir.fab_cache.exists()


def test_the_flwr_cli_fallback_sends_the_same_command_as_before(tmp_path, monkeypatch):
    cdir = co.CoordinatorDir(tmp_path / "coord")
    _write_job(cdir, tmp_path / "run")
    calls: list[list[str]] = []
    monkeypatch.setattr(co, "flwr_cli", lambda args, home, **kw: calls.append(args) or {"run-id": "9"})
    monkeypatch.setenv(ca.SUBMIT_ENV, ca.FLWR_CLI)
    assert co.submit_run(cdir, resume=True) == 9
    assert calls == [["run", str(cdir.app_dir), fl.CONNECTION, "--run-config", "resume=true"]]
    monkeypatch.setenv(ca.SUBMIT_ENV, "carrier-pigeon")
    with pytest.raises(ConfigError, match="FEDCUSTOMER_SUBMIT must be in-process or flwr-cli"):
        co.submit_run(cdir)


def test_waiting_for_the_coordinator_uses_the_control_api(link):
    cdir, _root, _certs = link
    co.wait_for_coordinator(cdir, timeout=60)


# --- Flower internals the in-process submission relies on ------------------------------------
TESTED_FLOWER = "1.42"


def test_flower_is_the_version_the_control_api_calls_were_checked_against():
    version = importlib.metadata.version("flwr")
    assert version.startswith(TESTED_FLOWER + "."), (
        f"flwr {version}: re-check fedcustomer.deploy.control_api against this Flower's `flwr run` "
        "(flwr/cli/run/run.py) and `flwr ls` (flwr/cli/ls.py), then update TESTED_FLOWER"
    )


def test_the_flower_cli_functions_used_keep_their_signatures():
    from flwr.cli import build, config_utils, flower_config, run_utils, utils
    from flwr.common import config, serde
    from flwr.supercore.fab import Fab

    assert list(inspect.signature(flower_config.read_superlink_connection).parameters) == ["connection_name"]
    assert list(inspect.signature(utils.init_http_client_from_connection).parameters)[0] == "connection"
    assert callable(utils.flwr_cli_exc_handler) and callable(build.build_fab_from_disk)
    assert list(inspect.signature(config_utils.load_and_validate).parameters)[0] == "path"
    assert list(inspect.signature(run_utils.format_runs).parameters)[:2] == ["runs", "now_isoformat"]
    assert all(callable(f) for f in (serde.fab_to_proto, serde.user_config_to_proto, serde.run_from_proto))
    assert config.parse_config_args(["resume=true"]) == {"resume": True}
    assert Fab("h", b"x", {}).hash_str == "h"


def test_a_run_record_has_exactly_the_fields_flwr_ls_prints():
    """Our record of a run against Flower's own JSON writer for `flwr ls` (same keys, same values)."""
    from flwr.cli import ls
    from flwr.cli.run_utils import RunRow

    fields = inspect.signature(RunRow).parameters
    row = RunRow(**{name: (7 if "traffic" in name or name == "run_id" else "x") for name in fields})
    row.compute_time_serverapp, row.compute_time_clientapp = 1.5, 2.0
    assert ca._row_dict(row) == json.loads(ls._to_json([row]))["runs"][0]


def test_the_fallback_cli_still_exists():
    res = subprocess.run(
        [fl.executable("flwr"), "run", "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and "--run-config" in res.stdout


def test_waiting_for_a_coordinator_that_is_down_retries_then_says_why(tmp_path):
    certs = make_dev_certificates(tmp_path / "certs")
    cdir = co.CoordinatorDir(tmp_path / "coord")
    co.write_flwr_config(cdir, f"127.0.0.1:{fl.free_port()}", certs.ca_cert)
    with pytest.raises(FederationError, match="did not answer within 0.5 s .*SuperLink is unavailable"):
        co.wait_for_coordinator(cdir, timeout=0.5, poll=0.1)
