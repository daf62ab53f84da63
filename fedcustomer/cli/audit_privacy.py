"""``fedcustomer audit privacy``: measure a run's privacy empirically, beside the epsilon it claims.

Writes ``privacy_audit.json`` and ``privacy_audit.png`` into the run directory and links
them from its ``summary.json`` (``result.json`` for a query, ``rfm.json`` for rfm). Exit 0 when every empirical
lower bound is at or below its claim, 10 when one exceeds it (the claim is refuted at the
stated confidence). Where a partner home has a people registry, ``--identity`` names who asks:
each home whose rows are read checks and records that person first. See docs/PRIVACY_AUDIT.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from fedcustomer.cli.audit import audit_app
from fedcustomer.cli.identity import IDENTITY_ENV, load_signer
from fedcustomer.cli.terminal import terminal

FLAGGED_EXIT = 10
console = terminal()


def register(app: typer.Typer) -> None:
    """Nothing to attach: importing this module adds ``privacy`` to the ``audit`` group."""


@audit_app.command("privacy")
def privacy_cmd(
    run: Path = typer.Option(
        ...,
        "--run",
        help="A run directory of `fedcustomer run` (horizontal or vertical), `demo` (one job), `query` or `rfm`.",
    ),
    homes: Path = typer.Option(
        None, "--homes", help="The partner homes the job trained on (default: the run's partners/ folder)."
    ),
    canaries: int = typer.Option(
        1000, "--canaries", help="Canaries per audited mechanism (each in with prob. 1/2)."
    ),
    shadows: int = typer.Option(
        4, "--shadows", help="Shadow models of the reference-model attack (0: none)."
    ),
    releases: int = typer.Option(1000, "--releases", help="Releases per dataset in an analytics audit."),
    nonprivate: bool = typer.Option(
        True, "--nonprivate/--no-nonprivate", help="Also attack a non-private replay, for comparison."
    ),
    confidence: float = typer.Option(0.95, "--confidence", help="Confidence of the lower bounds."),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the audit's own randomness (canaries, coins, noise)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print privacy_audit.json instead of a table."),
    identity: str = typer.Option(
        None,
        "--identity",
        envvar=IDENTITY_ENV,
        help="Your identity key file; needed where a partner home has a people registry: each home whose "
        "rows the audit reads checks that your role may 'audit_read' and records you first.",
    ),
) -> None:
    """Canary audit and membership inference (training, horizontal or vertical), or repeated releases (query, rfm)."""
    from fedcustomer.privacy_audit.run_audit import PLOT, REPORT, audit_run

    signer = load_signer(identity) if identity else None
    report = audit_run(
        run,
        homes=homes,
        canaries_count=canaries,
        shadows=shadows,
        releases=releases,
        nonprivate=nonprivate,
        seed=seed,
        confidence=confidence,
        signer=signer,
    )
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        table = Table(title=f"privacy audit ({confidence:.0%} confidence)")
        for col in ("mechanism", "claimed epsilon", "lower bound", "guesses / releases", "verdict"):
            table.add_column(col)
        for m in report["mechanisms"]:
            if "white_box" in m:
                wb = m["white_box"]
                detail = f"{wb['correct']}/{wb['guesses']} right of {m['canaries']} canaries"
            else:
                detail = f"{m['releases_per_dataset']} per dataset"
            verdict = "[red]FLAGGED: bound exceeds claim[/]" if m["flagged"] else "[green]consistent[/]"
            table.add_row(
                escape(m["mechanism"]),
                f"{m['claimed_epsilon']:.3f}",
                f"{m['epsilon_lower_bound']:.3f}",
                detail,
                verdict,
            )
        console.print(table)
        mia = report.get("membership_inference") or {}
        if mia:
            attacks = Table(title="membership inference (members vs held-out rows, equal counts)")
            for col in ("model", "attack", "AUC", "TPR @ 0.1% FPR", "TPR @ 1% FPR"):
                attacks.add_column(col)
            for target, result in mia.items():
                for name in ("loss_threshold", "lira_offline"):
                    if name in result:
                        r = result[name]
                        attacks.add_row(
                            target,
                            name,
                            f"{r['auc']:.3f}",
                            f"{r['tpr_at_0.1pct_fpr']:.4f}",
                            f"{r['tpr_at_1pct_fpr']:.4f}",
                        )
            console.print(attacks)
        console.print(f"wrote {escape(str(Path(run) / REPORT))} and {escape(str(Path(run) / PLOT))}")
    if report["flagged"]:
        sys.exit(FLAGGED_EXIT)  # typer.Exit's code is dropped by main()'s non-standalone mode
