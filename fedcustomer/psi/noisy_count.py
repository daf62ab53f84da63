"""A count-only PSI's size released with differential privacy, paid from the party's own ledger.

In a count-only session (``reveal="count"``) both parties learn the exact intersection size
from the protocol itself; what leaves them (to the coordinator and its reports) can instead be
a noisy count: two-sided geometric noise (the discrete Laplace mechanism, sensitivity 1: one
customer more or less changes the size by at most 1) with scale ``1/epsilon``, epsilon-DP.

Only the *initiator* releases the noisy count; the responder releases nothing but still
pays the same epsilon from its own ledger, because the one released number is about its
customers too. Both charges go through :func:`fedcustomer.privacy.dp.release.release`, keyed
by run and session, so a re-sent finish is answered with the same noisy count and never paid
twice. Randomness is from ``secrets`` (the OS source).
"""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path
from typing import Any

from fedcustomer.errors import ConfigError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.partner.ledger_keys import psi_key
from fedcustomer.privacy.dp.release import Mechanism, PaidResults, Step, check
from fedcustomer.psi.release_audit import audited_release
from fedcustomer.psi.state import drop_session

MECHANISM = "psi_count_discrete_laplace"
_UNIT = 2.0**-53


def check_count_epsilon(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 10:
        raise ConfigError(f"count epsilon must be a number in (0, 10], got {value!r}")
    return float(value)


def _geometric(p: float) -> int:
    """Failures before the first success, success probability ``1 - p``, from the OS random source."""
    u = (secrets.randbits(53) + 1) * _UNIT  # uniform in (0, 1]
    return int(math.floor(math.log(u) / math.log(p)))


def discrete_laplace(epsilon: float) -> int:
    """Two-sided geometric noise with P(k) proportional to exp(-epsilon |k|)."""
    p = math.exp(-epsilon)
    return _geometric(p) - _geometric(p)


class _CountCodec:
    suffix = ".json"

    def dump(self, path: Path, result: int, paid: bool) -> None:
        from fedcustomer.common.files import atomic_write_text

        atomic_write_text(path, json.dumps({"count": result, "paid": paid}) + "\n", mode=0o600)

    def load(self, path: Path) -> tuple[int, bool]:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return int(doc["count"]), bool(doc["paid"])


def release_count(
    home: PartnerHome, dataset: str, *, run_id: str, session: str, size: int, epsilon: float, publish: bool
) -> int | None:
    """Charge ``epsilon`` once for this session's count; the noisy count if ``publish``, else None."""
    config = home.config()
    ledger = home.ledger(dataset, config.budget_for(dataset))
    step = Step(
        charge_key=psi_key("count", run_id, session),
        label=f"PSI count of session {session}",
        run_id=run_id,
        query_id=session,
    )
    mechanism = Mechanism(MECHANISM, epsilon_delta=(epsilon, 0.0), details={"sensitivity": 1})

    def produce() -> tuple[int, Mechanism]:
        check(ledger, step, mechanism)
        return max(0, size + discrete_laplace(epsilon)) if publish else -1, mechanism

    results: PaidResults[int] = PaidResults(home.state_dir / "psi" / "counts", _CountCodec())
    released = audited_release(home, ledger, step, results, produce, kind="count")
    return released.result if publish else None


def finish_count(
    home: PartnerHome,
    session: str,
    state: dict[str, Any],
    *,
    size: int,
    role: str,
    set_size: int,
    peer_set_size: int,
    duplicates: int,
) -> dict[str, Any]:
    """Count-only finish: our values came back unlinkable to our order, so the match said how many,
    never which. The exact ``size`` leaves only without ``count_epsilon``; nothing is kept."""
    eps = state.get("count_epsilon")
    if isinstance(eps, (int, float)):  # DP count: the initiator publishes it, both pay for it
        noisy = release_count(
            home,
            str(state.get("dataset")),
            run_id=str(state.get("run_id") or session),
            session=session,
            size=size,
            epsilon=float(eps),
            publish=role == "initiator",
        )
        size = -1 if noisy is None else noisy
    drop_session(home, session)  # nothing is kept: there is no alignment to keep
    return {
        "size": size,
        "digest": "",
        "set-size": set_size,
        "peer-set-size": peer_set_size,
        "duplicates-removed": duplicates,
    }
