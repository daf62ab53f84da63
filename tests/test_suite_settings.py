"""The suite's own settings: nothing in it may depend on how busy the machine is."""

from hypothesis import settings


def test_hypothesis_runs_without_a_deadline_by_default() -> None:
    """A per-example deadline fails correct property tests on a loaded machine."""
    assert settings.default.deadline is None
    assert settings(max_examples=5).deadline is None  # what a test's own @settings(...) inherits
