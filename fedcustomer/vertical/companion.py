"""The label owner's comparison model in the joint job's idle slots: no sequential exchange of its own.

While the passive party is asked its begin or a backward, the label owner only waits; the same
exchange (one message per node) carries the comparison model's next message to it: its begin,
then each fit with the next begin (``then-begin``), the last fit with its finish
(``then-finish``). Its session config names the joint job (``alongside-run``): the label owner
calibrates its noise, and checks each of its charges, with the joint job's unpaid rounds
counted as pending (:mod:`fedcustomer.vertical.spend`), so a joint charge is never refused
because the comparison model paid first.

What the joint job leaves over (rounds not begun, a begun round not fitted) is handed to the
comparison model's drive of its own after the joint finish, as before; a checkpoint keeps its
trained rounds, and the label owner charges each round once, so nothing is paid twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from flwr.app import RecordDict

from fedcustomer.vertical.checkpoint import RoundCheckpoint, VerticalRound
from fedcustomer.vertical.outputs import DriveResult
from fedcustomer.vertical.replies import Decision, accounting, decision, numbers, record

RUNNING, COMPLETED, STOPPED, HANDED_OVER = "running", "completed", "stopped", "handed over"


@dataclass
class Companion:
    """Where the comparison model stands; ``message`` is what it sends next, ``take`` reads the answer."""

    cfg: dict[str, Any]  # its session config (with ``alongside-run``), without the round
    rounds: int
    name: str  # the label owner's partner name, as its reports are keyed
    steps: int
    checkpoint: RoundCheckpoint | None = None
    trained: list[VerticalRound] = field(default_factory=list)
    next_round: int = 1
    begun: Decision | None = None  # the answer to ``next_round``'s begin, once asked (a refusal too)
    status: str = RUNNING
    reason: str | None = None  # why it stopped or was handed over
    accounting: dict[str, dict[str, Any]] = field(default_factory=dict)
    idle_first: int = 0  # slots left unused before its first begin: its noise is calibrated meanwhile
    _t0: float = 0.0

    def message(self) -> tuple[str, dict[str, Any]] | None:
        """(action, config) of its next message, or None when it has nothing more to send here."""
        if self.status != RUNNING or self.next_round > self.rounds:
            return None
        rnd = self.next_round
        if self.begun is None:
            return "vertical_begin", self.cfg | {"round": rnd}
        flags = {"then-begin": True} if rnd < self.rounds else {"then-finish": True}
        return "vertical_fit", self.cfg | {"round": rnd} | flags

    def rides(self) -> tuple[str, dict[str, Any]] | None:
        """:meth:`message` for the idle slot now offered; None while a slot is still to be left unused."""
        side = self.message()
        if side is not None and self.idle_first > 0:
            self.idle_first -= 1
            return None
        return side

    def take(self, reply: RecordDict) -> None:
        """The label owner's answer to :meth:`message`."""
        rnd = self.next_round
        if self.begun is None:
            self._opened(decision(reply))
            return
        report = VerticalRound(rnd, "trained", metrics=numbers(reply), steps=self.steps)
        record(report, self.name, self.begun)  # what its begin paid
        report.wall_time_s = time.perf_counter() - self._t0
        self.trained.append(report)
        if self.checkpoint is not None:
            self.checkpoint.save(self.trained)
        self.begun, self.next_round = None, rnd + 1
        if rnd < self.rounds:
            self._opened(decision(reply, "next-"))
        else:
            self.accounting, self.status = accounting(reply), COMPLETED

    def _opened(self, answer: Decision) -> None:
        self._t0 = time.perf_counter()
        self.begun = answer
        if not answer[0]["ok"]:  # refused: its own drive records it and finishes, after the joint job
            self.status, self.reason = STOPPED, str(answer[0]["reason"])

    def hand_over(self, why: str) -> None:
        """Stop sending here (an error answered, or the joint job ended): its own drive goes on later.

        A round begun but not fitted is fitted there, from the begin's answer; a message that
        failed is asked again (the label owner charges a round once and fits it once).
        """
        if self.status == RUNNING:
            self.status, self.reason = HANDED_OVER, why

    def result(self, sizes: dict[str, float]) -> DriveResult:
        """Its result when it completed here: no drive of its own follows."""
        return DriveResult("completed", list(self.trained), None, self.accounting, sizes)

    def interrupted(self, why: str) -> DriveResult:
        """Its result when the joint job failed: what it trained and paid, no metrics as the joint job's.

        A round paid but not fitted is listed as ``paid`` (its epsilon counts), not as trained.
        """
        if self.status == COMPLETED:
            return self.result({})
        rounds = list(self.trained)
        if self.begun is not None and self.begun[0]["ok"]:
            paid = VerticalRound(self.next_round, "paid")
            record(paid, self.name, self.begun)
            rounds.append(paid)
        return DriveResult("failed", rounds, f"stopped with the joint job: {why}")
