"""The result lines ``coordinator run`` prints from a deployed job's summary, and why a job stopped."""

from __future__ import annotations

from typing import Any


def _num(value: object, spec: str) -> str:
    """A number for the result lines; 'n/a' where a partner never reported one (it failed)."""
    return "n/a" if not isinstance(value, (int, float)) else format(float(value), spec)


def partner_lines(summary: dict[str, Any]) -> list[str]:
    """One line per partner: budget, rounds, and the first failure's reason when it failed."""
    lines = []
    for p in summary.get("partners", []):
        line = (
            f"{p['name']}: epsilon {_num(p.get('epsilon_spent'), '.3f')} of {_num(p.get('epsilon_target'), 'g')}, "
            f"{p['rounds_trained']} trained, {p['rounds_refused']} refused, {p['rounds_failed']} failed"
        )
        failures = p.get("failures") or []
        if failures:
            line += f" (round {failures[0]['round']}: {failures[0]['reason']})"
        lines.append(line)
    return lines


def stopped_reason(summary: dict[str, Any]) -> str:
    """Why a deployed job did not complete, naming the partners that failed or refused."""
    reason = f"the job stopped: {summary.get('stop_reason') or 'no round completed'}"
    failed = [
        p for p in summary.get("partners", []) if p.get("rounds_failed") and not p.get("rounds_trained")
    ]
    if failed:
        first = failed[0]["failures"][0]["reason"] if failed[0].get("failures") else "no reason given"
        reason += (
            f"; failed at every round: {', '.join(p['name'] for p in failed)} "
            f"(first reason, from {failed[0]['name']}: {first})"
        )
    refused = [
        p["name"]
        for p in summary.get("partners", [])
        if p.get("rounds_refused") and not p.get("rounds_trained")
    ]
    if refused:
        reason += f"; refused every round (budget): {', '.join(refused)}"
    return reason
