"""The coordinator's record of the audit anchors partners send with their replies, for any job.

Horizontal rounds record the anchor of each round reply themselves (:mod:`.rounds`, written by
:mod:`.report`). Jobs whose messages pass through a protocol the coordinator does not parse
reply by reply (SecAgg+ stages, PSI steps, split-learning steps) wrap their grid in
:class:`AnchorGrid`: every reply that carries an anchor (``partner`` ConfigRecord, see
:mod:`fedcustomer.clients.anchor_mod`) is recorded in the run directory's ``anchors.jsonl``,
in the same line format (:func:`~fedcustomer.privacy.audit.anchors.received_anchor`), so
``audit verify --anchors`` reads it as it reads a horizontal run's.

A partner repeats the same anchor in every reply until its log signs a new checkpoint; the
log keeps one line per partner each time its anchor changes (the first reply that carried
it), so a run with thousands of step messages still records a few lines per round. Lines
already in the file (an earlier run or a resumed one) are kept as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from fedcustomer.common.files import atomic_write_text
from fedcustomer.privacy.audit.anchors import WIRE_KEY, received_anchor
from fedcustomer.server.report import ANCHORS_FILE
from fedcustomer.server.wrapped_grid import WrappedGrid


def reply_anchor(reply: Message) -> tuple[str | None, str | None]:
    """The sender's name and the anchor text a reply carries; (None, None) without an anchor."""
    if reply.has_error() or not reply.has_content():
        return None, None
    for record in reply.content.config_records.values():
        if WIRE_KEY in record:
            name = record.get("name")
            return (str(name) if name is not None else None), str(record[WIRE_KEY])
    return None, None


def kind_and_round(message_type: str, group_id: str, config: dict[str, Any]) -> tuple[str, int | None]:
    """What a reply answered, as an anchors.jsonl ``kind`` and ``round``.

    A bare ``train`` message is a training round (SecAgg+ stages name theirs in ``group_id``);
    ``psi_*`` and ``vertical_*`` actions are PSI and split-learning steps (a split-learning step
    names its round in its config).
    """
    action = message_type.partition(".")[2]
    if action.startswith("vertical_"):
        rnd = config.get("round")
        return "vertical", int(rnd) if isinstance(rnd, int) and not isinstance(rnd, bool) else None
    if action.startswith("psi_"):
        return "psi", None
    if not action or action == "default":
        return "round", int(group_id) if group_id.isdigit() else None
    return action, None


class AnchorLog:
    """``anchors.jsonl`` of one run directory, appended to as new anchors arrive (rewritten atomically)."""

    def __init__(self, out: str | Path, run_id: str) -> None:
        self.path = Path(out) / ANCHORS_FILE
        self.run_id = run_id
        try:
            kept = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            kept = ""
        self._kept = kept if not kept or kept.endswith("\n") else kept + "\n"
        self.lines: list[dict[str, Any]] = []
        self._last: dict[str, str] = {}  # partner -> the anchor text last recorded from it

    def take(self, partner: str, text: str, *, kind: str, round: int | None) -> bool:
        """Record ``text`` from ``partner`` unless it is the anchor last recorded from it; True if recorded."""
        if self._last.get(partner) == text:
            return False
        self._last[partner] = text
        self.lines.append(received_anchor(text, partner=partner, run_id=self.run_id, kind=kind, round=round))
        new = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.lines)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, self._kept + new)
        return True

    def record(self, sent: Iterable[Message], replies: Iterable[Message]) -> None:
        """Record the anchors of ``replies`` to ``sent`` (matched by node)."""
        to_node = {m.metadata.dst_node_id: m for m in sent}
        for reply in replies:
            name, text = reply_anchor(reply)
            if text is None:
                continue
            node = reply.metadata.src_node_id
            asked = to_node.get(node)
            config: dict[str, Any] = {}
            if asked is not None and asked.has_content() and "config" in asked.content.config_records:
                config = dict(asked.content.config_records["config"])
            meta = asked.metadata if asked is not None else reply.metadata
            kind, rnd = kind_and_round(meta.message_type, meta.group_id or "", config)
            self.take(name or f"node-{node}", text, kind=kind, round=rnd)


class AnchorGrid(WrappedGrid):
    """A grid that records the anchors of every reply it passes on (see the module docstring)."""

    def __init__(self, grid: Grid, log: AnchorLog) -> None:
        super().__init__(grid)
        self.log = log

    @classmethod
    def around(cls, grid: Grid, out: str | Path, run_id: str) -> AnchorGrid:
        """``grid`` recording into ``out``'s anchors.jsonl; a grid that already records is returned as is."""
        return grid if isinstance(grid, AnchorGrid) else cls(grid, AnchorLog(out, run_id))

    def sharing_log(self, grid: Grid) -> AnchorGrid:
        """Another grid (e.g. the comparison model's) recording into the same file."""
        return grid if isinstance(grid, AnchorGrid) else AnchorGrid(grid, self.log)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        self.log.record([], replies)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        sent = list(messages)
        replies = list(self.grid.send_and_receive(sent, timeout=timeout))
        self.log.record(sent, replies)
        return replies
