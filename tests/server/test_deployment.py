"""The deployed ServerApp's setup: spec by name or file (never from data), run-config split, waiting for nodes."""

import json
from pathlib import Path

import pytest

from fedcustomer.data.cdnow import CDNOW_SPEC
from fedcustomer.data.features import FeatureSpec, NumericFeature
from fedcustomer.data.synthetic import CLV_SPEC, REPAYMENT_SPEC
from fedcustomer.data.uci_credit import UCI_SPEC, UCI_SPEC_DP
from fedcustomer.errors import ConfigError, FederationError, SchemaError
from fedcustomer.server.deployment import (
    BUILTIN_SPECS,
    DEPLOY_KEYS,
    default_spec_ref,
    deployment_setup,
    load_declared_spec,
    resolve_spec,
    split_run_config,
    wait_for_partners,
)
from fedcustomer.server.job import JobConfig


class CountingGrid:
    """A grid whose connected node count follows a script, one entry per poll (the last one repeats)."""

    def __init__(self, counts: list[int]) -> None:
        self.counts, self.polls = counts, 0

    def get_node_ids(self) -> list[int]:
        n = self.counts[min(self.polls, len(self.counts) - 1)]
        self.polls += 1
        return list(range(1, n + 1))


@pytest.mark.parametrize(
    "ref, spec",
    [
        ("synthetic:repayment", REPAYMENT_SPEC),
        ("synthetic:clv", CLV_SPEC),
        ("uci-credit", UCI_SPEC),
        ("uci-credit-dp", UCI_SPEC_DP),
        ("cdnow", CDNOW_SPEC),
    ],
)
def test_builtin_specs_resolve_by_name(ref: str, spec: FeatureSpec) -> None:
    assert ref in BUILTIN_SPECS
    assert resolve_spec(ref) is spec


def test_a_spec_file_round_trips(tmp_path: Path) -> None:
    spec = FeatureSpec("clv", "spend", "id", [NumericFeature("age", 18, 90, log=True)])
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec.to_dict()), encoding="utf-8")
    assert resolve_spec(str(path)) == spec


def test_an_unknown_name_is_neither_builtin_nor_file(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="feature-spec 'bank.csv' is neither a built-in \\(synthetic:repayment"
    ):
        resolve_spec("bank.csv")


def test_a_file_that_is_not_a_spec_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a feature spec JSON .*FeatureSpec.to_dict"):
        resolve_spec(str(bad))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"task": "repayment", "label": "y", "features": [{"name": "x"}]}), "utf-8")
    with pytest.raises(SchemaError, match="features\\[0\\].type must be 'numeric' or 'categorical'"):
        resolve_spec(str(wrong))


def test_default_spec_ref_names_the_synthetic_task_or_the_source() -> None:
    assert default_spec_ref(JobConfig(task="clv")) == "synthetic:clv"
    assert default_spec_ref(JobConfig(data="uci-credit")) == "uci-credit"


def test_split_run_config_separates_deployment_keys_from_job_fields() -> None:
    raw = {"num-server-rounds": 3, "epsilon": 1.5, "feature-spec": "cdnow", "resume": True, "secagg": False}
    job, extra = split_run_config(raw)
    assert (job.rounds, job.epsilon) == (3, 1.5)
    assert extra == {"feature-spec": "cdnow", "resume": True, "secagg": False}
    assert set(extra) <= set(DEPLOY_KEYS)
    assert "resume" in raw  # the caller's mapping is left as it was


def test_split_run_config_still_refuses_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="unknown job option 'secret-key'"):
        split_run_config({"secret-key": 1})


def test_wait_returns_as_soon_as_every_partner_is_there() -> None:
    grid = CountingGrid([1, 2, 3, 3])
    assert wait_for_partners(grid, wanted=3, minimum=2, timeout=60, poll=0) == 3
    assert grid.polls == 3


def test_wait_settles_for_the_minimum_once_the_time_is_up() -> None:
    assert wait_for_partners(CountingGrid([2]), wanted=3, minimum=2, timeout=0, poll=0) == 2


def test_wait_refuses_fewer_than_the_minimum_after_the_timeout() -> None:
    with pytest.raises(
        FederationError, match="only 1 partner node\\(s\\) connected after 0 s; the job needs at least 2"
    ):
        wait_for_partners(CountingGrid([1]), wanted=3, minimum=2, timeout=0, poll=0)


def test_deployment_setup_reads_everything_from_the_run_config(tmp_path: Path) -> None:
    raw = {"partners": 2, "min-partners": 2, "data": "uci-credit", "resume": True, "wait-for-partners": 0}
    job, spec, n, resume = deployment_setup(CountingGrid([2]), raw)
    assert (job.data, n, resume) == ("uci-credit", 2, True) and spec is UCI_SPEC
    with pytest.raises(FederationError):
        deployment_setup(CountingGrid([1]), raw)


def test_a_features_only_spec_is_refused_for_a_horizontal_job(tmp_path: Path) -> None:
    """A vertical party's spec without a label (features draft without --label) cannot train a horizontal job."""
    path = tmp_path / "features-only.json"
    spec = FeatureSpec("repayment", None, None, [NumericFeature("income", 0.0, 200.0)])
    path.write_text(json.dumps(spec.to_dict()))
    assert FeatureSpec.load(path) == spec  # a features-only spec round-trips
    for load in (resolve_spec, load_declared_spec):
        with pytest.raises(
            ConfigError, match="is a features-only spec \\(no label\\); a horizontal job needs"
        ):
            load(str(path))
