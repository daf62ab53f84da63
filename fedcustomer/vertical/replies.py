"""Reading a party's reply on the coordinator: its decision, tensors, numbers and accounting.

Shared by the chain of a vertical job's exchanges (:mod:`.rounds`) and the comparison model
that rides in its idle slots (:mod:`.companion`), so both read a reply the same way.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from flwr.app import RecordDict

from fedcustomer.vertical.checkpoint import VerticalRound

Decision = tuple[dict[str, Any], dict[str, Any]]  # a party's ("decision", "metrics") for one round


def decision(content: RecordDict, prefix: str = "") -> Decision:
    return dict(content[f"{prefix}decision"]), dict(content[f"{prefix}metrics"])


def tensors(content: RecordDict) -> dict[str, torch.Tensor]:
    return content.array_records["arrays"].to_torch_state_dict() if "arrays" in content else {}


def numbers(content: RecordDict, name: str = "metrics") -> dict[str, float]:
    return {k: float(v) for k, v in content.metric_records[name].items() if isinstance(v, int | float)}


def batches(content: RecordDict) -> list[torch.Tensor]:
    arrays = tensors(content)
    return list(torch.split(arrays["batch-positions"], arrays["batch-sizes"].tolist()))


def accounting(reply: RecordDict) -> dict[str, dict[str, Any]]:
    return {str(dict(reply["partner"])["name"]): json.loads(str(dict(reply["accounting"])["json"]))}


def record(report: VerticalRound, name: str, answer: Decision) -> bool:
    """Keep a party's answer for round ``report.round`` in the report; False when it refused."""
    verdict, metrics = answer
    if "epsilon-total" in metrics:
        report.epsilon[name] = float(metrics["epsilon-total"])
        report.epsilon_target[name] = float(metrics["epsilon-target"])
    if not verdict["ok"]:
        report.refusals[name] = str(verdict["reason"])
    return bool(verdict["ok"])
