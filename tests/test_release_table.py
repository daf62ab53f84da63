"""Every file a job writes is in the README's "what leaves a partner" table, with what covers it."""

import fnmatch
import json
import re
from pathlib import Path

import pytest

from fedcustomer.apps.client import make_client_app
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.server.job import JobConfig
from fedcustomer.server.partners import prepare_partners
from fedcustomer.server.run import run_job_on_grid
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.runner import run_vertical_local
from tests.toy import toy_frame

README = Path(__file__).resolve().parents[1] / "README.md"


def listed_outputs() -> list[str]:
    """The backticked names in the first column of the table under "What leaves a partner node"."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### What leaves a partner node", 1)[1].split("\n#", 1)[0]
    patterns = []
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| ---") and not line.startswith("| output"):
            first = line.split("|")[1]
            patterns += re.findall(r"`([^`]+)`", first)
    assert patterns, "the release table is missing from the README"
    return patterns


def unlisted(root: Path, patterns: list[str]) -> list[str]:
    """Files under ``root`` (a listed directory counts for everything below it) that no pattern names."""
    missing = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(fnmatch.fnmatch(rel, pat) or rel.startswith(pat.rstrip("/") + "/") for pat in patterns):
            continue
        if any(fnmatch.fnmatch(path.name, pat) for pat in patterns if "/" not in pat):
            continue
        missing.append(rel)
    return missing


def test_the_table_names_what_covers_each_output() -> None:
    text = README.read_text(encoding="utf-8").split("### What leaves a partner node", 1)[1].split("\n#", 1)[0]
    rows = [line for line in text.splitlines() if line.startswith("| `") or line.startswith("| (")]
    assert len(rows) >= 10
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 4 and cells[2], row  # every release says what covers it (or that nothing does)


def test_a_horizontal_job_writes_only_listed_files(tmp_path: Path) -> None:
    data = tmp_path / "customers.csv"
    toy_frame(600, 1, strength=1.25).to_csv(data, index=False)
    job = JobConfig(
        data=str(data),
        label="defaulted",
        partners=2,
        rounds=2,
        arch="logreg",
        batch_size=100,
        out=str(tmp_path / "run"),
        min_partners=1,
    )
    spec, homes = prepare_partners(job)
    run_job_on_grid(LocalGrid(make_client_app([str(h.root) for h in homes]), 2), job, spec, num_partners=2)
    assert unlisted(tmp_path / "run", listed_outputs()) == []
    # the pooled calibration (from the partners' reliability sums) is among what was released and listed
    calibration = json.loads((tmp_path / "run" / "summary.json").read_text())["calibration"]
    assert len(calibration["bins"]) == 10 and 0 <= calibration["ece"] <= 1
    assert (tmp_path / "run" / "plots" / "reliability.png").is_file()


@pytest.mark.slow
def test_a_vertical_job_and_a_psi_write_only_listed_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.cli.cli_runner import run

    out = tmp_path / "vertical"
    run_vertical_local(VerticalJob(customers=600, rounds=1, batch_size=64, out=str(out), seed=0))
    assert unlisted(out, listed_outputs()) == []
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("customer_id\n" + "\n".join(f"K{i:05d}" for i in range(0, 300)) + "\n")
    b.write_text("customer_id\n" + "\n".join(f"K{i:05d}" for i in range(150, 450)) + "\n")
    code, _, err = run(["psi", "--a", str(a), "--b", str(b), "--out", str(tmp_path / "psi")], capsys)
    assert code == 0, err
    assert unlisted(tmp_path / "psi", listed_outputs()) == []


def test_analytics_outputs_are_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.cli.cli_runner import run

    spec = tmp_path / "q.json"
    spec.write_text('{"id": "n", "dataset": "retailer", "kind": "count", "epsilon": 0.5}')
    code, _, err = run(
        [
            "query",
            "--spec",
            str(spec),
            "--data",
            "synthetic",
            "--partners",
            "2",
            "--out",
            str(tmp_path / "q"),
        ],
        capsys,
    )
    assert code == 0, err
    code, _, err = run(["rfm", "--epsilon", "0.5", "--partners", "2", "--out", str(tmp_path / "rfm")], capsys)
    assert code == 0, err
    for out in (tmp_path / "q", tmp_path / "rfm"):
        assert unlisted(out, listed_outputs()) == []
