"""``coordinator run --mode psi|vertical``: a bank and a retailer over the running coordinator.

Kept apart from :mod:`fedcustomer.cli.deploy` (the horizontal commands); both submit a Flower
app to the same SuperLink and wait for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.markup import escape

from fedcustomer.cli.terminal import terminal
from fedcustomer.errors import ConfigError, FederationError

console = terminal()
err = terminal(stderr=True)


def _progress(text: str) -> None:
    err.print(f"[dim]{escape(text)}[/]")


def _psi_watch(cfg: dict[str, Any]) -> Callable[[], None]:
    """Show each new PSI progress line the ServerApp leaves in the run directory (chunks per side)."""
    path, seen = Path(str(cfg["out"])) / "psi-progress.txt", [""]

    def watch() -> None:
        try:
            line = path.read_text(encoding="utf-8").strip()
        except OSError:
            return
        if line and line != seen[0]:
            seen[0] = line
            _progress(line)

    return watch


def run_two_party_job(
    workdir: Path,
    *,
    mode: str,
    reveal: str = "ids",
    count_epsilon: float | None = None,
    sum_options: dict[str, Any] | None = None,
    psi_chunk_size: int | None = None,
    job_options: dict[str, Any],
    wait_for_partners: float,
    resume: bool,
    timeout: float,
    as_json: bool,
    wait: float,
) -> dict[str, Any]:
    """Submit (or resume) a PSI / vertical job and wait; raises FederationError unless it completed."""
    from fedcustomer.deploy.coordinator import (
        CoordinatorDir,
        ending_poll,
        file_rewritten,
        read_summary,
        submit_run,
        wait_for_coordinator,
        wait_run,
        write_app,
    )
    from fedcustomer.deploy.two_party import two_party_run_config
    from fedcustomer.vertical.job import VerticalJob

    cdir = CoordinatorDir(workdir)
    if resume:
        if not cdir.job_path.exists():
            raise ConfigError(f"--resume: no earlier job in {cdir.root}")
        cfg = json.loads(cdir.job_path.read_text(encoding="utf-8"))
        if cfg.get("mode") != mode:
            raise ConfigError(
                f"--resume: the last job in {cdir.root} is a {cfg.get('mode') or 'horizontal'} job, not {mode}"
            )
    else:
        job = VerticalJob(**{k: v for k, v in job_options.items() if v is not None})
        cfg = two_party_run_config(
            job,
            mode=mode,
            wait_for_partners=wait_for_partners,
            reveal=reveal,
            count_epsilon=count_epsilon,
            sum_options=sum_options,
            psi_chunk_size=psi_chunk_size,
        )
        write_app(cdir, cfg)
    wait_for_coordinator(cdir, timeout=wait, progress=_progress)
    flwr_run_id = submit_run(cdir, resume=resume)
    err.print(
        f"submitted {mode} job {cfg['run-id']} as Flower run {flwr_run_id}; waiting for bank and retailer ..."
    )
    ended = file_rewritten(Path(str(cfg["out"])) / "summary.json")
    status = wait_run(
        cdir,
        flwr_run_id,
        timeout=timeout,
        progress=_progress,
        watch=_psi_watch(cfg),
        finished_hint=ended,
        ending_poll=ending_poll(),
    )
    summary = read_summary(cfg, cdir, flwr_run_id)
    if as_json:
        console.print_json(json.dumps(summary))
    else:
        for line in summary_lines(summary):
            console.print(escape(line))
        console.print(f"Flower run {flwr_run_id}: {status['status']}; results in {cfg['out']}")
    if summary.get("status") != "completed":
        raise FederationError(f"the {mode} job stopped: {summary.get('stop_reason') or 'no reason given'}")
    return summary


def summary_lines(s: dict[str, Any]) -> list[str]:
    """What the coordinator's operator reads: sizes for a PSI, metrics and budgets for a vertical job."""
    if s.get("mode") == "psi" and s.get("reveal") == "sum":
        eps = s.get("epsilon") or {}
        return [
            f"intersection-sum {s['status']}: rate of {s.get('value')!r} where {s.get('where')!r}: "
            f"{_fmt(s.get('rate'))} (noisy count {s.get('noisy_count')}, epsilon {_fmt(eps.get('total'))} "
            "from each party)"
        ]
    if s.get("mode") == "psi":
        sizes = ", ".join(f"{k} {v}" for k, v in (s.get("parties") or {}).items())
        size = s.get("intersection_size")
        dp = s.get("intersection_size_dp")
        noisy = f" (DP, epsilon {dp['epsilon']:g} from each party)" if dp else ""
        return [f"PSI {s['status']}: set sizes {sizes}; shared customers {size}{noisy}"]
    metric = s.get("primary_metric", "")
    lines = [
        f"vertical {s.get('task')}: {s['status']}, {s.get('rounds_completed')}/{s.get('rounds_planned')} rounds, "
        f"PSI size {s.get('psi_size')}, held-out {metric} {_fmt((s.get('metrics') or {}).get(metric))}"
    ]
    base = s.get("baseline") or {}
    if base:
        lines.append(f"{base.get('name')}: held-out {metric} {_fmt((base.get('metrics') or {}).get(metric))}")
    for p in s.get("partners", []):
        lines.append(
            f"{p['name']} ({p['role']}): epsilon {_fmt(p.get('epsilon_spent_all_releases'))} "
            f"of {_fmt(p.get('epsilon_target'))}"
        )
    if s.get("stop_reason"):
        lines.append(f"stopped: {s['stop_reason']}")
    return lines


def _fmt(v: object) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
