"""`fedcustomer run / baseline / demo` as a user runs them: exit codes and output, no tracebacks (real processes,
and the simulation engine end to end once; the refusal and cap paths in process, on Flower's in-process grid)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.cli.cli_runner import run as run_cli

ROOT = Path(__file__).resolve().parents[2]


def fedcustomer(*args: str, cwd: Path, timeout: float | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_DISABLE_USAGE_STATS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "fedcustomer", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _csv(path: Path, n: int = 300, **columns) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "income": rng.normal(50, 10, n),
            "age": rng.integers(18, 80, n),
            "default": rng.integers(0, 2, n),
        }
    )
    for name, value in columns.items():
        if value is None:
            frame = frame.drop(columns=[name])
        else:
            frame[name] = value
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def in_process_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The partners' ClientApp answers the ServerApp in this process instead of in Ray workers.

    The command, the job's preparation, the ServerApp, the partners' DP rounds, ledgers, report and exit
    code are the product's own; only the transport is Flower's in-process grid. The simulation engine
    itself runs end to end in test_run_in_simulation_engine_learns_within_budget."""
    import flwr.simulation
    from flwr.app import Context, RecordDict

    from fedcustomer.server.inprocess import LocalGrid

    def run_simulation(*, server_app, client_app, num_supernodes, **_engine_options) -> None:
        context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
        server_app(LocalGrid(client_app, num_supernodes), context)

    monkeypatch.setattr(flwr.simulation, "run_simulation", run_simulation)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """``fedcustomer ARGS`` through the command's own main() in this process (its error handling and exit
    codes included), run from ``tmp_path``: for refusals that need no process of their own."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)

    def call(*args: str) -> subprocess.CompletedProcess:
        code, stdout, stderr = run_cli(list(args), capsys)
        return subprocess.CompletedProcess(["fedcustomer", *args], code, stdout, stderr)

    return call


def _assert_clean_failure(result: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in output, output


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["--epsilon", "0"], 3, "--epsilon must be > 0"),
        (["--epsilon", "-2"], 3, "--epsilon must be > 0"),
        (["--strategy", "fedbest"], 3, "unknown strategy 'fedbest'"),
        (["--task", "churn"], 3, "--task must be one of"),
        (["--data", "uci-credit", "--task", "clv"], 3, "serves the repayment task only"),
    ],
)
def test_bad_options_exit_nonzero_with_a_clear_message(
    tmp_path: Path, in_process, args: list[str], code: int, needle: str
) -> None:
    _assert_clean_failure(in_process("run", "--out", str(tmp_path / "r"), *args), code, needle)


def test_missing_label_column_is_reported(tmp_path: Path) -> None:
    data = _csv(tmp_path / "bank.csv", default=None)
    result = fedcustomer(
        "run", "--data", str(data), "--label", "default", "--out", str(tmp_path / "r"), cwd=tmp_path
    )
    _assert_clean_failure(result, 4, "default")


def test_text_feature_with_too_many_values_is_reported(tmp_path: Path, in_process) -> None:
    # a few text values become a categorical feature; free text cannot
    data = _csv(tmp_path / "bank.csv", income=[f"text {i}" for i in range(300)])
    result = in_process("run", "--data", str(data), "--out", str(tmp_path / "r"))
    _assert_clean_failure(result, 4, "income", "too many for a categorical feature")
    assert "text 1" not in result.stdout + result.stderr


def test_empty_partner_is_reported(tmp_path: Path, in_process) -> None:
    folder = tmp_path / "partners"
    folder.mkdir()
    _csv(folder / "bank_a.csv")
    _csv(folder / "bank_b.csv", n=0)
    result = in_process("run", "--data", str(folder), "--partners", "2", "--out", str(tmp_path / "r"))
    _assert_clean_failure(result, 4, "bank_b")


def test_missing_real_data_file_says_where_to_get_it(tmp_path: Path, in_process) -> None:
    result = in_process(
        "run", "--data", "uci-credit", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")
    )
    _assert_clean_failure(result, 4, "UCI")


@pytest.mark.slow
def test_run_in_simulation_engine_learns_within_budget(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = fedcustomer(
        "run",
        "--data",
        "synthetic",
        "--partners",
        "3",
        "--rounds",
        "4",
        "--epsilon",
        "3",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 4
    # DP noise comes from the OS RNG, so the AUC varies by run (0.69-0.78 seen, mean 0.75); a model
    # that does not learn is at 0.5
    assert summary["metrics"]["auc"] > 0.65
    assert len(summary["partners"]) == 3
    for p in summary["partners"]:
        assert 0 < p["epsilon_spent"] <= p["epsilon_target"] == 3.0
    assert "privacy budget per partner" in result.stdout


def test_tiny_epsilon_shows_refusals_and_never_overspends(
    tmp_path: Path, in_process_engine: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(
        [
            "run",
            "--data",
            "synthetic",
            "--partners",
            "3",
            "--rounds",
            "30",
            "--epsilon",
            "0.05",
            "--out",
            str(out),
        ],
        capsys,
    )
    output = stdout + stderr
    assert "Traceback" not in output
    summary = json.loads((out / "summary.json").read_text())
    assert all(p["rounds_refused"] >= 1 for p in summary["partners"])
    assert all((p["epsilon_spent"] or 0) <= 0.05 for p in summary["partners"])
    assert code in (0, 6)  # 6 when not even one round fits in the budget
    assert "refused" in output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--central-max-epsilon", "2"], "needs --central-dp"),
        (["--central-dp", "--central-max-epsilon", "2", "--strategy", "krum"], "fedavg, fedprox"),
        (["--central-dp", "--central-accountant", "moments"], "--central-accountant must be one of rdp, pld"),
    ],
    ids=["central-cap-without-central-dp", "central-cap-with-krum", "central-unknown-accountant"],
)
def test_central_cap_options_are_refused_before_anything_runs(
    tmp_path: Path, in_process, args: list[str], needle: str
) -> None:
    _assert_clean_failure(in_process("run", "--out", str(tmp_path / "r"), *args), 3, needle)


def test_central_cap_stops_the_run_and_says_why(
    tmp_path: Path, in_process_engine: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(
        [
            *("run", "--data", "synthetic", "--partners", "2", "--min-partners", "2", "--rounds", "4"),
            *("--central-dp", "--central-noise-multiplier", "2", "--central-max-epsilon", "3.5"),
            *("--federated-eval", "final", "--out", str(out)),
        ],
        capsys,
    )
    assert code == 0, stdout + stderr  # a round was aggregated: a clean stop
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["rounds_completed"] == 2
    assert (
        summary["stop_reason"].startswith("round 3 not started") and "maximum 3.5" in summary["stop_reason"]
    )
    assert summary["central_dp"]["accountant"] == "rdp" and summary["central_dp"]["epsilon"] <= 3.5
    assert "maximum 3.5" in stdout


def test_with_homes_the_partner_count_defaults_to_the_homes_it_holds(tmp_path: Path, in_process) -> None:
    # `run --homes DIR` with two homes stopped at "pass --partners 2" (the default is 3) before saying
    # anything about the job itself (found by a new-user trial).
    from fedcustomer.data.features import FeatureSpec, NumericFeature
    from fedcustomer.partner.home import PartnerHome

    for name in ("bank_a", "bank_b"):
        PartnerHome.create(tmp_path / "homes" / name, name)
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(FeatureSpec("repayment", "default", None, [NumericFeature("age", 18, 100)]).to_dict())
    )
    args = ("run", "--homes", str(tmp_path / "homes"), "--data", "loans", "--feature-spec", str(spec))
    result = in_process(*args, "--out", str(tmp_path / "r"))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output and "--partners" not in output, output
    assert "bank_a" in output, output
    _assert_clean_failure(
        in_process(*args, "--partners", "3", "--out", str(tmp_path / "r")),
        3,
        "pass --partners 2",
    )
