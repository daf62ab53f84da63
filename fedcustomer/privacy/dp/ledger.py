"""The per-partner privacy budget ledger: every release is charged here first.

One SQLite file per partner (``ledger.db`` in the partner home) holds every charge
for every dataset: federated training rounds and analytics queries alike. The privacy
unit is the partner's customer, so every charge in the file composes against the
partner's one (epsilon, delta) budget, whatever dataset it names: a renamed copy of a
file, or a second dataset about the same people, draws on the same budget. The
``dataset`` column says what a release was about (for reports), not which budget paid.
A charge that would push the partner past its target is refused before anything is
released, and nothing is written for it except a refusal record.

Composition:
- Gaussian releases (DP-SGD rounds, Gaussian analytics) compose with the partner's
  accountant (``accountants.Accountant``): Renyi DP exactly as one Opacus ``RDPAccountant``
  over the whole history (the default), or a privacy loss distribution with dp-accounting's
  ``PLDAccountant`` (tighter; see ``pld``). Each row records the accountant (and the PLD's
  discretisation interval) that computed its totals, so the history can be recomputed
  (``recompute``). A partner that switches accountant has its whole history recomposed with
  the new one from then on; rows keep the accountant they were charged under.
- Other (epsilon, delta) releases (e.g. Laplace counts) compose with the Gaussian part
  by basic composition: epsilon_total = eps_gauss(delta_target - sum(delta_i)) + sum(eps_i).
  Sound, and documented as looser than necessary.
- A Gaussian release that differs from its accounted mechanism on a rare event (SecAgg+'s
  clipping in distributed DP) records that event's probability in its details
  (``event_probability``); the events of all rows, summed, take ``(1 + e^epsilon) * p`` of the
  delta target before the Gaussian part is composed (``rare_events``), so the spend is stated
  at the target delta with them inside.

Charges are idempotent by ``charge_key`` (e.g. ``run:<id>:round:<r>``), so a node that
restarts never pays twice for the same release. A Gaussian charge may carry the released
result's bytes (``kept_results``), committed in its own transaction, so a node re-sends the
very result it paid for (``release.ChargedResults``).

Concurrency: writers from any number of processes serialise on an flock of ``ledger.db.lock``
and SQLite's BEGIN IMMEDIATE; the file is in WAL mode, so while a process has it open recent
commits may sit in ``ledger.db-wal``: copy the ledger with SQLite's backup API (``sqlite3
ledger.db ".backup copy.db"``), or all three files, never ``ledger.db`` alone.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedcustomer.errors import BudgetExhausted, ConfigError, IntegrityError
from fedcustomer.privacy.dp import accounting
from fedcustomer.privacy.dp.accountants import Accountant
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger_file import (
    BUSY_TIMEOUT_S,
    NAMES,
    SCHEMA,
    WalHold,
    create_whole,
    missing_columns,
)
from fedcustomer.privacy.dp.rare_events import epsilon_with_event, event_reserve

GAUSSIAN = "gaussian_rdp"
APPROX = "approx_dp"
#: A Gaussian row's details key for the probability of the rare event on which its release
#: differs from the accounted mechanism (absent: no such event).
EVENT_PROBABILITY = "event_probability"


@dataclass(frozen=True)
class Spend:
    """Cumulative spend of one dataset against its target."""

    epsilon: float
    delta: float
    epsilon_target: float
    delta_target: float

    @property
    def epsilon_remaining(self) -> float:
        return max(0.0, self.epsilon_target - self.epsilon)


@dataclass(frozen=True)
class Charge:
    """One recorded release."""

    seq: int
    charge_key: str
    dataset: str
    time: str
    family: str
    mechanism: str
    run_id: str | None
    round: int | None
    query_id: str | None
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int | None
    epsilon: float | None
    delta: float | None
    epsilon_total: float
    delta_total: float
    epsilon_target: float
    delta_target: float
    details: dict[str, Any] = field(default_factory=dict)
    accountant: str = "rdp"  # which accountant computed epsilon and epsilon_total
    pld_interval: float | None = None  # its discretisation interval (PLD only)
    already_paid: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("already_paid")
        return d


class BudgetLedger:
    """One partner's ledger file, seen from one dataset: charges are labelled with it, spend is partner-wide."""

    def __init__(
        self,
        path: str | Path,
        dataset: str,
        budget: DatasetBudget,
        accountant: Accountant | None = None,
        *,
        hold: WalHold | None = None,
    ) -> None:
        """``hold``: a connection held for this ledger file (see :meth:`use_hold`), lent from the start,
        so that even the schema check runs on it instead of a connection opened for it."""
        self.path = Path(path)
        self.dataset = dataset
        self.budget = budget
        self.accountant = accountant if accountant is not None else Accountant()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._hold: WalHold | None = hold  # a held connection this ledger borrows (see use_hold)
        self._prepare()

    # --- reading ---------------------------------------------------------------
    def charges(self) -> list[Charge]:
        """Charges of this ledger's dataset (for reports; the spend composes over :meth:`all_charges`)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM charges WHERE dataset = ? ORDER BY seq", (self.dataset,)
            ).fetchall()
        return [_charge_from_row(r) for r in rows]

    def all_charges(self) -> list[Charge]:
        """Every charge of the partner, all datasets: what its customers' privacy loss composes over."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM charges ORDER BY seq").fetchall()
        return [_charge_from_row(r) for r in rows]

    def datasets(self) -> list[str]:
        """Every dataset named by a charge, then by a refusal only, in first-use order."""
        with self._connect() as conn:
            charged = [
                r[0] for r in conn.execute("SELECT dataset FROM charges GROUP BY dataset ORDER BY MIN(seq)")
            ]
            refused = [
                r[0] for r in conn.execute("SELECT dataset FROM refusals GROUP BY dataset ORDER BY MIN(seq)")
            ]
        return charged + [d for d in refused if d not in charged]

    def refusals(self) -> list[dict[str, Any]]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM refusals WHERE dataset = ? ORDER BY seq", (self.dataset,)
            ).fetchall()
        return [dict(r) for r in rows]

    def find(self, charge_key: str) -> Charge | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM charges WHERE charge_key = ?", (charge_key,)).fetchone()
        return _charge_from_row(row, already_paid=True) if row else None

    def run_noise(self, run_id: str, mechanism: str) -> float | None:
        """The noise multiplier of ``run_id``'s first Gaussian charge of ``mechanism`` on this
        dataset (None before that charge): what the run keeps for its later rounds."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT noise_multiplier FROM charges WHERE dataset = ? AND run_id = ? AND mechanism = ? "
                "AND noise_multiplier IS NOT NULL ORDER BY seq LIMIT 1",
                (self.dataset, run_id, mechanism),
            ).fetchone()
        return None if row is None else float(row[0])

    def kept(self, charge_key: str) -> bytes | None:
        """The result committed with the charge ``charge_key`` (``charge_gaussian(..., kept=...)``), if any."""
        with self._connect() as conn:
            row = conn.execute("SELECT data FROM kept_results WHERE charge_key = ?", (charge_key,)).fetchone()
        return bytes(row[0]) if row else None

    def gaussian_history(self) -> list[GaussianSteps]:
        return _gaussian_history(self.all_charges())

    def spent(self) -> Spend:
        """The partner's spend over every charge in the file (all datasets)."""
        return self._spend_of(self.all_charges())

    def project_gaussian(self, steps: GaussianSteps) -> Spend:
        """What the spend would be after ``steps`` more Gaussian steps (nothing is written)."""
        return self.project(extra_gaussian=[steps])

    def project(
        self,
        extra_gaussian: Sequence[GaussianSteps] = (),
        extra_approx: Sequence[tuple[float, float]] = (),
        extra_events: float = 0.0,
    ) -> Spend:
        """What the spend would be after these releases (and rare events of total probability
        ``extra_events``); nothing is written."""
        return self._spend_of(
            self.all_charges(),
            extra_gaussian=extra_gaussian,
            extra_approx=extra_approx,
            extra_events=extra_events,
        )

    def calibrate_noise(
        self,
        sample_rate: float,
        steps: int,
        *,
        sigma_min: float = 0.3,
        sigma_max: float = 50.0,
        pending_gaussian: Sequence[GaussianSteps] = (),
        pending_approx: Sequence[tuple[float, float]] = (),
        reserve_epsilon: float = 0.0,
    ) -> float:
        """Noise multiplier so that ``steps`` more steps exactly use the remaining budget.

        ``pending_*`` are releases that will be charged alongside (e.g. a label release at
        the start of a vertical job): the noise leaves room for them. ``reserve_epsilon``
        is left unspent for a release that comes later (e.g. a comparison model).
        """
        charges = self.all_charges()
        approx_eps, approx_delta = _approx_totals(charges)
        approx_eps += sum(e for e, _ in pending_approx)
        approx_delta += sum(d for _, d in pending_approx)
        delta_rdp = self.budget.delta - approx_delta
        if delta_rdp <= 0:
            return sigma_max
        total = self.budget.epsilon - reserve_epsilon
        events = event_total(charges)
        if events:
            # earlier rows' rare events keep their reserve, sized for the total this calibration
            # reaches; a total whose reserve would take over half the delta cannot be stated
            # (``rare_events``), so the noise aims no higher than that
            total = min(total, math.log(max(delta_rdp / (2 * events) - 1, 1.0)))
            delta_rdp -= event_reserve(total, events)
        # A hair under the target so per-round float rounding can never overshoot it.
        target = (total - approx_eps) * (1 - 1e-9)
        if target <= 0:
            return sigma_max
        return self.accountant.calibrate_noise(
            self.gaussian_history() + list(pending_gaussian),
            sample_rate,
            steps,
            target,
            delta_rdp,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
        )

    def accounting_state(self, through_seq: int | None = None) -> dict[str, Any]:
        """Everything needed to recompute the spend independently.

        ``through_seq`` stops at that charge (the spend as it stood when it was paid), so a
        result re-sent later reports what it reported the first time.
        """
        charges = self.all_charges()
        if through_seq is not None:
            charges = [c for c in charges if c.seq <= through_seq]
        history = _gaussian_history(charges)
        state: dict[str, Any] = {
            **self.accountant.describe(),
            "gaussian_history": [h.as_tuple() for h in history],
            "approx_charges": [
                {"epsilon": c.epsilon, "delta": c.delta, "mechanism": c.mechanism}
                for c in charges
                if c.family == APPROX
            ],
            "composition": f"{self.accountant.name.upper()} within Gaussian releases; basic composition "
            "with other releases; over every charge of the partner (all datasets)",
            "event_probability_total": event_total(charges),
            "delta_target": self.budget.delta,
        }
        if self.accountant.name == "rdp":
            state["opacus_state_dict"] = accounting.opacus_accountant(history).state_dict()
        return state

    def record_refusal(self, charge_key: str, mechanism: str, epsilon_would_be: float, reason: str) -> None:
        """Keep a release the partner declined before trying (e.g. a round checked in advance)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO refusals (charge_key, dataset, time, mechanism, epsilon_would_be, epsilon_target,"
                " reason, accountant) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    charge_key,
                    self.dataset,
                    _now(),
                    mechanism,
                    epsilon_would_be,
                    self.budget.epsilon,
                    reason,
                    self.accountant.name,
                ),
            )

    # --- charging --------------------------------------------------------------
    def charge_gaussian(
        self,
        charge_key: str,
        steps: GaussianSteps,
        *,
        mechanism: str = "dpsgd",
        run_id: str | None = None,
        round: int | None = None,
        query_id: str | None = None,
        details: Mapping[str, Any] | None = None,
        kept: bytes | None = None,
        event_probability: float = 0.0,
    ) -> Charge:
        """Record Gaussian steps; refuse (BudgetExhausted) if the target would be exceeded.

        ``kept``: the released result's bytes, committed in the charge's own transaction (:meth:`kept`
        reads them back), so a charge never exists without its result; a step already paid keeps
        the bytes committed with its first charge. ``event_probability``: the chance that the
        release differs from these steps' mechanism (kept in the row's details, reserved in delta)."""
        if not (0 <= event_probability < 1):
            raise ConfigError(f"an event probability must be in [0, 1), got {event_probability}")
        if event_probability:
            details = {**(details or {}), EVENT_PROBABILITY: float(event_probability)}
        return self._charge(
            charge_key,
            GAUSSIAN,
            mechanism,
            steps=steps,
            run_id=run_id,
            round=round,
            query_id=query_id,
            details=details,
            kept=kept,
        )

    def charge_approx(
        self,
        charge_key: str,
        epsilon: float,
        delta: float,
        *,
        mechanism: str,
        run_id: str | None = None,
        query_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Charge:
        """Record an (epsilon, delta) release such as a Laplace count."""
        if not (epsilon > 0) or not (0 <= delta < 1):
            raise ConfigError(f"a release needs epsilon > 0 and 0 <= delta < 1, got ({epsilon}, {delta})")
        return self._charge(
            charge_key,
            APPROX,
            mechanism,
            epsilon=epsilon,
            delta=delta,
            run_id=run_id,
            query_id=query_id,
            details=details,
        )

    def _charge(
        self,
        charge_key: str,
        family: str,
        mechanism: str,
        *,
        steps: GaussianSteps | None = None,
        epsilon: float | None = None,
        delta: float | None = None,
        run_id: str | None = None,
        round: int | None = None,
        query_id: str | None = None,
        details: Mapping[str, Any] | None = None,
        kept: bytes | None = None,
    ) -> Charge:
        with self._transaction() as conn:
            existing = conn.execute("SELECT * FROM charges WHERE charge_key = ?", (charge_key,)).fetchone()
            if existing is not None:
                if existing["dataset"] != self.dataset:
                    raise ConfigError(
                        f"charge key {charge_key!r} already used for dataset {existing['dataset']!r}"
                    )
                return _charge_from_row(existing, already_paid=True)
            rows = conn.execute("SELECT * FROM charges ORDER BY seq").fetchall()
            prior = [_charge_from_row(r) for r in rows]
            if family == GAUSSIAN:
                assert steps is not None
                event = float((details or {}).get(EVENT_PROBABILITY, 0.0))
                after = self._spend_of(prior, extra_gaussian=[steps], extra_events=event)
                alone = epsilon_with_event(
                    lambda d: self.accountant.epsilon([steps], d) if d > 0 else float("inf"),
                    self.budget.delta,
                    event,
                )
            else:
                assert epsilon is not None and delta is not None  # charge_approx always passes both
                after = self._spend_of(prior, extra_approx=[(float(epsilon), float(delta))])
                alone = epsilon
            if after.epsilon > self.budget.epsilon or after.delta > self.budget.delta:
                reason = (
                    f"dataset {self.dataset!r}: this release would bring the partner's epsilon to {after.epsilon:.4f} "
                    f"(delta {after.delta:.2e}), past the target {self.budget.epsilon:g} (delta {self.budget.delta:.0e}); "
                    f"spent so far {self._spend_of(prior).epsilon:.4f}"
                )
                conn.execute(
                    "INSERT INTO refusals (charge_key, dataset, time, mechanism, epsilon_would_be, epsilon_target,"
                    " reason, accountant) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        charge_key,
                        self.dataset,
                        _now(),
                        mechanism,
                        after.epsilon,
                        self.budget.epsilon,
                        reason,
                        self.accountant.name,
                    ),
                )
                raise _Refused(reason)
            cur = conn.execute(
                "INSERT INTO charges (charge_key, dataset, time, family, mechanism, run_id, round, query_id,"
                " noise_multiplier, sample_rate, steps, epsilon, delta, epsilon_total, delta_total,"
                " epsilon_target, delta_target, details, accountant, pld_interval)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    charge_key,
                    self.dataset,
                    _now(),
                    family,
                    mechanism,
                    run_id,
                    round,
                    query_id,
                    steps.noise_multiplier if steps else None,
                    steps.sample_rate if steps else None,
                    steps.steps if steps else None,
                    alone,
                    delta if family == APPROX else None,
                    after.epsilon,
                    after.delta,
                    self.budget.epsilon,
                    self.budget.delta,
                    json.dumps(dict(details or {}), sort_keys=True),
                    self.accountant.name,
                    self.accountant.interval,
                ),
            )
            if kept is not None:
                conn.execute("INSERT INTO kept_results (charge_key, data) VALUES (?, ?)", (charge_key, kept))
            row = conn.execute("SELECT * FROM charges WHERE seq = ?", (cur.lastrowid,)).fetchone()
            return _charge_from_row(row)

    def hold_wal(self) -> WalHold:
        """Keep the write-ahead log between this ledger's transactions until the hold is closed
        (:class:`WalHold`); this ledger borrows the held connection meanwhile (:meth:`use_hold`)."""
        hold = WalHold(self.path)
        hold.mark_schema_ready()  # this ledger found the schema complete when it was made
        self.use_hold(hold)
        return hold

    def use_hold(self, hold: WalHold | None) -> None:
        """Run reads and charges on ``hold``'s connection while it is open and free (fewer syncs
        and connections; every commit is as durable); None goes back to a connection per call."""
        self._hold = hold

    # --- internals -------------------------------------------------------------
    def _spend_of(
        self,
        charges: Sequence[Charge],
        extra_gaussian: Sequence[GaussianSteps] = (),
        extra_approx: Sequence[tuple[float, float]] = (),
        extra_events: float = 0.0,
    ) -> Spend:
        history = _gaussian_history(charges) + list(extra_gaussian)
        approx_eps, approx_delta = _approx_totals(charges)
        for e, d in extra_approx:
            approx_eps += e
            approx_delta += d
        if any(h.steps for h in history):

            def total_at(delta_rdp: float) -> float:
                if delta_rdp <= 0:
                    return float("inf")
                return self.accountant.epsilon(history, delta_rdp) + approx_eps

            events = event_total(charges) + extra_events
            eps = epsilon_with_event(total_at, self.budget.delta - approx_delta, events)
            return Spend(eps, self.budget.delta, self.budget.epsilon, self.budget.delta)
        return Spend(approx_eps, approx_delta, self.budget.epsilon, self.budget.delta)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """The held connection when one is lent (same process, one borrower at a time), else a fresh
        connection for this call: never one carried across a fork (SQLite forbids that), nor shared by
        threads at once."""
        with self._hold.borrow() if self._hold is not None else nullcontext(None) as held:
            if held is not None:
                yield held
                return
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        finally:
            conn.close()

    def _prepare(self) -> None:
        """Write-ahead logging, then the tables, and the columns an earlier version lacked, in one transaction.

        WAL: readers never block the writer, and a commit is one fsync. The mode is stored in
        the file. Where WAL is unavailable (some network file systems) SQLite keeps its
        rollback journal: slower, just as safe. ``synchronous=FULL`` (the default) keeps every
        commit durable. A ledger already complete is only read here (one connection, no lock);
        a new one is made whole by :func:`~fedcustomer.privacy.dp.ledger_file.create_whole`
        and needs no check.
        """
        if not self.path.exists():
            if create_whole(self.path, self._lock_path):
                return  # made whole here just now: WAL and every table of SCHEMA, nothing to check
        elif self._hold is not None and self._hold.schema_ready:
            return  # a ledger on this open hold found it complete; tables and columns are only added
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            names = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master")}
            ready = names >= NAMES and not missing_columns(conn)
        if ready:
            if self._hold is not None:
                self._hold.mark_schema_ready()
            return
        with self._transaction() as conn:  # again, under the lock: another process may have done it
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            # bring a ledger written by an earlier version up to this schema (its rows were all RDP)
            for table, column, decl in missing_columns(conn):
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Read-check-write serialised across processes: an flock on ``ledger.db.lock``, then BEGIN IMMEDIATE.

        Waiting writers sleep in the kernel and wake the moment the lock is released (SQLite's own
        busy handler polls with growing sleeps, which left writers idle for seconds under
        contention). BEGIN IMMEDIATE still guards against a writer that does not take the flock.
        """
        refused: _Refused | None = None
        lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            with self._connect() as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except _Refused as exc:
                    conn.execute("COMMIT")  # keep the refusal record, nothing else was written
                    refused = exc
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                else:
                    conn.execute("COMMIT")
        finally:
            os.close(lock_fd)  # releases the flock
        if refused is not None:
            raise BudgetExhausted(str(refused))


class _Refused(Exception):
    """Internal: a refusal whose record must be committed before BudgetExhausted is raised."""


def _gaussian_history(charges: Sequence[Charge]) -> list[GaussianSteps]:
    return [_gaussian_steps(c) for c in charges if c.family == GAUSSIAN]


def _gaussian_steps(c: Charge) -> GaussianSteps:
    """The accounting parameters of a Gaussian charge (its row always holds all three)."""
    if c.noise_multiplier is None or c.sample_rate is None or c.steps is None:
        raise IntegrityError(
            f"ledger charge {c.charge_key!r} is Gaussian but lacks its noise multiplier, sample rate or steps"
        )
    return GaussianSteps(float(c.noise_multiplier), float(c.sample_rate), int(c.steps))


def _approx_totals(charges: Sequence[Charge]) -> tuple[float, float]:
    eps = sum(float(c.epsilon or 0.0) for c in charges if c.family == APPROX)
    delta = sum(float(c.delta or 0.0) for c in charges if c.family == APPROX)
    return eps, delta


def event_total(charges: Sequence[Charge]) -> float:
    """The summed probability of the rare events the rows' releases carry (0 for most ledgers)."""
    return sum(float(c.details.get(EVENT_PROBABILITY, 0.0)) for c in charges if c.family == GAUSSIAN)


def _charge_from_row(row: sqlite3.Row, already_paid: bool = False) -> Charge:
    d = dict(row)
    d["details"] = json.loads(d.get("details") or "{}")
    return Charge(**d, already_paid=already_paid)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
