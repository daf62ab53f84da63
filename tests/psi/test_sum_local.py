"""Both parties of the intersection-sum in one process, streamed through the chunked engine: the same
release as the in-memory run (noise off: exactly; one chunk or many, input batches of any size, first
row of a repeated id wins), the same charge, and a bad or oversize input refused with nothing charged
and no work file left."""

from __future__ import annotations

import pytest

from fedcustomer.errors import BudgetExhausted, DataError
from fedcustomer.psi import intersection_sum
from fedcustomer.psi.intersection_sum import MECHANISM, SumParams, run_intersection_sum_local
from fedcustomer.psi.sum_local import run_intersection_sum_stream
from tests.psi.test_intersection_sum import (
    IDS_A,
    IDS_B,
    TRUE_COUNT,
    TRUE_SUM,
    VALUES_A,
    WHERE_B,
    _charges,
    _payers,
)

# repeated ids whose later rows disagree with the first: the first row must win on both sides
REPEAT_A, REPEAT_VALUES = [IDS_A[95], IDS_A[3].lower()], [0.8, 0.1234]
REPEAT_B, REPEAT_WHERE = [IDS_B[120].upper(), IDS_B[10]], [True, False]


@pytest.fixture
def exact(monkeypatch):
    """No noise: the released figures are the exact ones, so runs can be compared."""
    monkeypatch.setattr(intersection_sum.SumParams, "sum_noise", lambda self: 0)
    monkeypatch.setattr(intersection_sum.SumParams, "count_noise", lambda self: 0)


def _batches(ids, cells, size):
    return [(ids[i : i + size], cells[i : i + size]) for i in range(0, len(ids), size)]


def _inputs(batch: int):
    a = _batches(IDS_A + REPEAT_A, VALUES_A + REPEAT_VALUES, batch)
    b = _batches(IDS_B + REPEAT_B, WHERE_B + REPEAT_WHERE, batch)
    return a, b


_PARAMS = SumParams(epsilon=4.0, value_max=1.0)


@pytest.fixture(scope="module")
def in_memory(tmp_path_factory):
    """The in-memory run of the same inputs, noise off, once per module: what every streamed run must
    release, with the sizes it saw and the charges each party paid."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(intersection_sum.SumParams, "sum_noise", lambda self: 0)
        patch.setattr(intersection_sum.SumParams, "count_noise", lambda self: 0)
        pa, pb = _payers(tmp_path_factory.mktemp("memory"))
        whole = run_intersection_sum_local(IDS_A + REPEAT_A, VALUES_A + REPEAT_VALUES, IDS_B + REPEAT_B,
                                           WHERE_B + REPEAT_WHERE, payer_a=pa, payer_b=pb, params=_PARAMS)  # fmt: skip
    sizes = (whole.set_size_a, whole.set_size_b, whole.duplicates_a, whole.duplicates_b)
    charges = [
        [(c.mechanism, c.epsilon, c.details) for c in payer.home.ledger(payer.dataset).charges()]
        for payer in (pa, pb)
    ]
    return whole.to_dict(), sizes, charges


@pytest.mark.parametrize(("chunk", "batch"), [(10_000, 10_000), (16, 7), (1, 50)])
def test_the_streamed_run_releases_what_the_in_memory_run_does(tmp_path, exact, in_memory, chunk, batch):
    whole, whole_sizes, whole_charges = in_memory
    sa, sb = _payers(tmp_path / "stream")
    work = tmp_path / "work"
    work.mkdir()
    a, b = _inputs(batch)
    got = run_intersection_sum_stream(
        a, b, payer_a=sa, payer_b=sb, params=_PARAMS, chunk_size=chunk, workdir=work
    )
    assert (got.noisy_count, got.noisy_sum) == (TRUE_COUNT, pytest.approx(TRUE_SUM))
    session_names = ("run_id", "session", "charge_key")  # each run is its own random session
    assert {k: v for k, v in got.to_dict().items() if k not in session_names} == {
        k: v for k, v in whole.items() if k not in session_names
    }
    sizes = (got.set_size_a, got.set_size_b, got.duplicates_a, got.duplicates_b)
    assert sizes == whole_sizes == (210, 230, 2, 2)
    for memory, stream in zip(whole_charges, (sa, sb)):  # the same mechanism and epsilon, paid once by each
        s = stream.home.ledger(stream.dataset).charges()
        assert [(c.mechanism, c.epsilon, c.details) for c in s] == memory
        assert [c.mechanism for c in s] == [MECHANISM]
    assert list(work.iterdir()) == []  # the work directory went with the run


@pytest.mark.parametrize(
    ("side", "bad", "message"),
    [
        ("a", (12, "n/a"), "value column, row 12: not a number"),
        ("a", (33, "inf"), "value column, row 33: not a finite number"),
        ("b", (40, "maybe"), "predicate column, row 40: not a boolean"),
        ("a", (20, ""), "row 20: customer id is empty after normalisation"),
    ],
)
def test_a_bad_cell_in_a_later_batch_names_its_row_and_nobody_pays(tmp_path, side, bad, message):
    row, cell = bad
    ids_a, values, ids_b, flags = list(IDS_A), list(VALUES_A), list(IDS_B), list(WHERE_B)
    if cell == "":
        ids_a[row] = " "
    elif side == "a":
        values[row] = cell
    else:
        flags[row] = cell
    pa, pb = _payers(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(DataError, match=message) as info:
        run_intersection_sum_stream(_batches(ids_a, values, 8), _batches(ids_b, flags, 8), payer_a=pa, payer_b=pb,
                                    workdir=work)  # fmt: skip
    assert cell not in str(info.value) or cell == ""
    assert (_charges(pa), _charges(pb)) == ([], []) and list(work.iterdir()) == []


def test_more_ids_than_the_maximum_or_unpaired_batches_are_refused_and_nobody_pays(tmp_path):
    pa, pb = _payers(tmp_path)
    a, b = _inputs(50)
    with pytest.raises(DataError, match="more than this party's maximum of 200 ids"):
        run_intersection_sum_stream(a, b, payer_a=pa, payer_b=pb, max_set_size=200)
    with pytest.raises(DataError, match="3 ids but 2 values"):
        run_intersection_sum_stream([(IDS_A[:3], VALUES_A[:2])], b, payer_a=pa, payer_b=pb)
    assert (_charges(pa), _charges(pb)) == ([], [])


def test_an_exhausted_budget_is_refused_before_any_input_is_read(tmp_path):
    pa, pb = _payers(tmp_path, eps_a=20.0, eps_b=0.5)

    def never():
        raise AssertionError("read before the budgets were checked")
        yield

    with pytest.raises(BudgetExhausted, match="intersection-sum"):
        run_intersection_sum_stream(never(), never(), payer_a=pa, payer_b=pb, params=SumParams(1.0))
    assert (_charges(pa), _charges(pb)) == ([], [])
