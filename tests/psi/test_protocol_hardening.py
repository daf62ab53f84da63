"""PSI against a dishonest coordinator: session binding, size caps, expiry, malformed messages,
and no raw id in any file a partner keeps."""

from __future__ import annotations

import re

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fedcustomer.errors import AccessDenied
from fedcustomer.privacy.crypto.pseudonym import normalize_id
from fedcustomer.psi.core import PSIParty, pack
from fedcustomer.psi.protocol import (
    MSG_ABORT,
    MSG_ACCEPT,
    MSG_ANSWER,
    MSG_BLIND,
    MSG_FINISH,
    MSG_REBLIND,
    PSI_ERROR_CODE,
    RECORD,
    PartyLimits,
    alignment_path,
    handle_blind,
    handle_reblind,
    party_path,
)
from fedcustomer.psi.relay import run_psi_on_grid
from tests.psi.raw_messages import send
from tests.psi.test_protocol import NAMES, RecordingGrid, _fake_pseudonyms, federation

BANK, SHOP = 1, 2
ERROR_REASON = re.compile(r"^(ConfigError|DataError|IntegrityError|AccessDenied|FederationError): \S")


def _refused(reply: Message, *needles: str) -> str:
    assert reply.has_error(), "the partner answered a request it must refuse"
    assert reply.error.code == PSI_ERROR_CODE
    for needle in needles:
        assert needle in reply.error.reason, reply.error.reason
    return reply.error.reason


def _guesses(ids) -> bytes:
    """What a probing coordinator sends: candidate ids blinded under its own secret."""
    return pack(PSIParty(ids, role="responder").blinded())


def _open(grid, session: str, peer: str = "shop") -> Message:
    reply = send(
        grid,
        BANK,
        MSG_BLIND,
        {"session-id": session, "dataset": "accounts", "role": "initiator", "peer": peer},
    )
    assert not reply.has_error(), reply.error.reason
    return reply


# --- probing -----------------------------------------------------------------------------
def test_a_second_reblind_in_one_session_is_refused(federation):
    homes, data, app = federation
    grid = RecordingGrid(app, 2)
    _open(grid, "probe")
    first = send(
        grid,
        BANK,
        MSG_REBLIND,
        {
            "session-id": "probe",
            "peer": "shop",
            "peer-blinded": _guesses([f"bank-{i:05d}" for i in range(5)]),
        },
    )
    assert not first.has_error()  # one answer per session: the peer's set
    again = send(
        grid,
        BANK,
        MSG_REBLIND,
        {
            "session-id": "probe",
            "peer": "shop",
            "peer-blinded": _guesses([f"bank-{i:05d}" for i in range(5, 40)]),
        },
    )
    _refused(again, "AccessDenied", "second request")


@pytest.mark.parametrize(
    ("setup", "cfg", "needle"),
    [
        (None, {"session-id": "never", "peer": "shop"}, "no open PSI session"),  # a session it never opened
        (
            "bound",
            {"session-id": "bound", "peer": "mallory"},
            "opened with another peer",
        ),  # other peer's name
    ],
)
def test_reblind_outside_a_session_opened_with_that_peer_is_refused(federation, setup, cfg, needle):
    homes, data, app = federation
    grid = RecordingGrid(app, 2)
    if setup:
        _open(grid, setup)
    reply = send(grid, BANK, MSG_REBLIND, {**cfg, "peer-blinded": _guesses(["BANK-00001", "BANK-00002"])})
    _refused(reply, "AccessDenied", needle)


def test_a_finished_session_answers_nothing_more(federation):
    homes, data, app = federation
    grid = RecordingGrid(app, 2)
    run_psi_on_grid(grid, BANK, SHOP, "accounts", "loyalty", session_id="done", **NAMES)
    reply = send(
        grid,
        BANK,
        MSG_REBLIND,
        {"session-id": "done", "peer": "shop", "peer-blinded": _guesses(["BANK-00001"])},
    )
    _refused(reply, "no open PSI session")


def test_peer_must_be_another_partner_and_on_the_allow_list_when_set(federation):
    homes, data, app = federation
    grid = RecordingGrid(app, 2)
    blind = {"session-id": "s1", "dataset": "accounts", "role": "initiator"}
    _refused(send(grid, BANK, MSG_BLIND, {**blind, "peer": "bank"}), "this partner itself")
    _refused(send(grid, BANK, MSG_BLIND, blind), "IntegrityError", "'peer'")
    grid.contexts[BANK].node_config["psi-peers"] = "shop, insurer"
    _refused(send(grid, BANK, MSG_BLIND, {**blind, "peer": "mallory"}), "AccessDenied", "psi-peers")
    assert not party_path(homes[0], "s1").exists()
    run_psi_on_grid(
        grid, BANK, SHOP, "accounts", "loyalty", session_id="s2", **NAMES
    )  # the listed peer works


# --- size caps ---------------------------------------------------------------------------
def test_oversize_sets_are_refused_before_any_work(federation):
    homes, data, app = federation
    grid = RecordingGrid(app, 2)
    grid.contexts[BANK].node_config["psi-max-set-size"] = 10
    reply = send(
        grid,
        BANK,
        MSG_BLIND,
        {"session-id": "big", "dataset": "accounts", "role": "initiator", "peer": "shop"},
    )
    _refused(reply, "DataError", "41 ids", "maximum of 10")
    grid.contexts[BANK].node_config["psi-max-set-size"] = 50
    _open(grid, "big2")
    reply = send(
        grid, BANK, MSG_REBLIND, {"session-id": "big2", "peer": "shop", "peer-blinded": b"\x00" * (51 * 32)}
    )
    _refused(reply, "AccessDenied", "51 values", "maximum of 50")
    grid.contexts[BANK].node_config["psi-max-set-size"] = "lots"
    _refused(send(grid, BANK, MSG_ABORT, {"session-id": "big2"}), "ConfigError", "maximum set size")


# --- expiry ------------------------------------------------------------------------------
def test_abandoned_sessions_expire_and_are_removed(federation):
    homes, data, app = federation
    bank = homes[0]
    limits = PartyLimits(session_ttl_s=60)
    load = lambda home, ds: list(data[ds])
    blind = {"dataset": "accounts", "role": "initiator", "peer": "shop"}
    handle_blind(bank, {**blind, "session-id": "old"}, load, _fake_pseudonyms, limits, now=1_000.0)
    assert party_path(bank, "old").exists()
    with pytest.raises(AccessDenied, match="expired"):
        handle_reblind(
            bank, {"session-id": "old", "peer": "shop", "peer-blinded": _guesses(["X"])}, limits, now=1_061.0
        )
    assert not party_path(bank, "old").exists()
    handle_blind(bank, {**blind, "session-id": "old2"}, load, _fake_pseudonyms, limits, now=1_000.0)
    handle_blind(bank, {**blind, "session-id": "new"}, load, _fake_pseudonyms, limits, now=1_100.0)
    assert not party_path(bank, "old2").exists() and party_path(bank, "new").exists()


# --- what stays on the partner's disk ------------------------------------------------------
def test_session_and_alignment_files_hold_no_raw_or_normalised_id(federation):
    homes, data, app = federation
    grid = RecordingGrid(app, 2)
    _open(grid, "open-one")  # stays open: its state file is on disk
    run_psi_on_grid(grid, BANK, SHOP, "accounts", "loyalty", session_id="closed", **NAMES)
    files = [
        party_path(homes[0], "open-one"),
        alignment_path(homes[0], "closed"),
        alignment_path(homes[1], "closed"),
    ]
    forms = {f for raw in data["accounts"] + data["loyalty"] for f in (raw.strip(), normalize_id(raw))}
    for path in files:
        text = path.read_text()
        assert len(text) > 100
        assert [f for f in forms if f in text] == [], path.name


# --- malformed messages ------------------------------------------------------------------
_FIELD = st.sampled_from(
    [
        "session-id",
        "dataset",
        "role",
        "peer",
        "workers",
        "peer-blinded",
        "my-doubly",
        "index",
        "chunks",
        "count",
        "want-next",
        "chunk-size",
    ]
)
_VALUE = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
    st.booleans(),
    st.binary(max_size=80),
    st.text(max_size=12),
    st.sampled_from(["accounts", "initiator", "responder", "shop", "fz", "bank", "open"]),
    st.lists(st.integers(0, 9), max_size=3),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    step=st.sampled_from([MSG_BLIND, MSG_REBLIND, MSG_ACCEPT, MSG_ANSWER, MSG_FINISH, MSG_ABORT]),
    cfg=st.dictionaries(_FIELD, _VALUE, max_size=7),
    node=st.sampled_from([BANK, SHOP]),
)
def test_fuzzed_messages_get_the_projects_error_never_a_traceback(federation, step, cfg, node):
    homes, data, app = federation
    try:
        record = ConfigRecord(cfg)
    except (TypeError, ValueError):
        assume(False)
    grid = RecordingGrid(app, 2)
    if not party_path(homes[0], "open").exists():  # an open session, so fuzzed chunks reach its checks
        send(grid, BANK, MSG_BLIND, {"session-id": "open", "dataset": "accounts", "role": "initiator",
                                     "peer": "shop", "chunk-size": 7})  # fmt: skip
    msg = Message(content=RecordDict({RECORD: record}), dst_node_id=node, message_type=f"query.{step}")
    reply = list(grid.send_and_receive([msg]))[0]
    if reply.has_error():
        assert reply.error.code == PSI_ERROR_CODE
        assert ERROR_REASON.match(reply.error.reason), reply.error.reason
