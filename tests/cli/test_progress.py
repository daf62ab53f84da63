"""Long commands say on stderr what they are doing; stdout keeps only results."""

from __future__ import annotations

import io
import logging

from fedcustomer.cli.progress import Progress


def test_phases_are_announced_and_timed():
    out = io.StringIO()
    p = Progress(out)
    with p.phase("(1/3) training"):
        pass
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("(1/3) training ...") and "(1/3) training: done in" in lines[1]


def test_library_round_logs_become_progress_lines_only_while_the_command_runs():
    out = io.StringIO()
    p = Progress(out)
    logger = logging.getLogger("fedcustomer.vertical.runner")
    before = logger.level
    with p.from_loggers("fedcustomer.vertical"):
        logger.info("vertical round %s/%s: %s", 1, 5, "auc 0.7")
    logger.info("after the command")
    assert "vertical round 1/5: auc 0.7" in out.getvalue() and "after" not in out.getvalue()
    assert logger.level == before


def test_forwarded_lines_are_not_printed_again_by_a_root_handler():
    """A library's ``logging.basicConfig`` (opacus does it on import) must not print each round twice."""
    out, root_out = io.StringIO(), io.StringIO()
    root_handler = logging.StreamHandler(root_out)
    root = logging.getLogger()
    root.addHandler(root_handler)
    logger = logging.getLogger("fedcustomer.vertical")
    propagates = logger.propagate
    try:
        with Progress(out).from_loggers("fedcustomer.vertical", "fedcustomer.psi.relay"):
            logging.getLogger("fedcustomer.vertical.runner").info("vertical round %s/%s", 1, 2)
            logging.getLogger("fedcustomer.psi.relay").info("PSI p: 1/1 chunks")
        assert out.getvalue().count("vertical round 1/2") == 1 and out.getvalue().count("PSI p") == 1
        assert root_out.getvalue() == ""
        assert logger.propagate == propagates  # restored: other commands log as before
    finally:
        root.removeHandler(root_handler)


def test_baseline_reports_its_three_trainings_on_stderr(capsys, monkeypatch):
    from types import SimpleNamespace

    import fedcustomer.data.sources as sources
    import fedcustomer.models.baseline as baseline
    from fedcustomer.cli import main

    fake = SimpleNamespace(
        name="m", metrics={"auc": 0.5}, epsilon=None, noise_multiplier=None, train_rows=1, test_rows=1
    )
    monkeypatch.setattr(sources, "load_partitions", lambda *a, **k: (None, []))
    monkeypatch.setattr(baseline, "train_centralised", lambda *a, **k: fake)
    monkeypatch.setattr(baseline, "gradient_boosting", lambda *a, **k: fake)
    try:
        main(["baseline", "--json"])
    except SystemExit as exc:
        assert not exc.code
    captured = capsys.readouterr()
    assert "(1/3)" in captured.err and "(3/3) gradient boosting: done" in captured.err
    assert captured.out.lstrip().startswith("[")  # --json output stays clean


def test_counted_steps_show_a_bar_when_the_total_is_known():
    out = io.StringIO()
    p = Progress(out)
    p.count("a", "blinding", 2_500_000, 10_000_000)
    p.count("b", "answering", 1_234, None)
    p.count("a", "matching", 9, 8)  # never past full
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("a: blinding 2,500,000/10,000,000 [#####---------------] 25%")
    assert lines[1].endswith("b: answering 1,234")
    assert lines[2].endswith("[####################] 100%")
