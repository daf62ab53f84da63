"""`fedcustomer query`, `rfm` and `budget show/set/verify`: DP analytics across partners from the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from fedcustomer.cli import secagg_trust
from fedcustomer.cli.terminal import terminal
from fedcustomer.errors import ConfigError
from fedcustomer.jobs.config import DEFAULT_DATA, DEFAULT_DELTA, DEFAULT_PARTNERS, DEFAULT_SEED

# Simulated partners of an analytics run get one generous budget (all their datasets).
SIMULATED_EPSILON = 10.0

console = terminal()
budget_app = typer.Typer(
    help="The partner's privacy budget: what it allows and what was spent, on what.", no_args_is_help=True
)
DATA_CHOICES = ("synthetic", "cdnow")


def register(app: typer.Typer) -> None:
    app.command("query", help="Run a declarative DP query (spec file) across partners.")(query_cmd)
    app.command("rfm", help="DP RFM segment sizes and mean spend per segment across partners.")(rfm_cmd)
    app.add_typer(budget_app, name="budget")
    secagg_trust.register(budget_app)


def _data_dir(data_dir: Path | None) -> Path:
    from fedcustomer.data.sources import DATA_DIR_ENV, default_data_dir

    if data_dir is not None:
        return data_dir
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    return default_data_dir()


def _homes(
    data: str | None,
    homes: Path | None,
    out: Path,
    partners: int,
    seed: int,
    data_dir: Path | None,
    budget: float,
) -> list:
    from fedcustomer.analytics import runner
    from fedcustomer.privacy.dp.budget import DatasetBudget

    if homes is not None and data is not None:
        raise ConfigError(
            "give either --data (simulated partners) or --homes (existing partner homes), not both"
        )
    if homes is not None:
        return runner.homes_in(homes)
    data = data or DEFAULT_DATA
    if data not in DATA_CHOICES:
        raise ConfigError(f"--data must be one of {', '.join(DATA_CHOICES)}, got {data!r}")
    root = out / "partners"
    target = DatasetBudget(budget, DEFAULT_DELTA)
    notices: list[str] = []
    if data == "synthetic":
        homes = runner.setup_synthetic(root, partners, seed=seed, budget=target, notices=notices)
    else:
        homes = runner.setup_cdnow(
            root, partners, data_dir=_data_dir(data_dir), seed=seed, budget=target, notices=notices
        )
    for notice in notices:
        console.print(f"[yellow]notice:[/] {escape(notice)}")
    return homes


AskerIdentityOpt = typer.Option(
    None,
    "--identity",
    envvar="FEDCUSTOMER_IDENTITY",
    help="Your identity key file: the query is signed with it for each partner, whose people registry "
    "must know you with a role allowed to read (needed by homes with people; the audit entry names you).",
)


def _signed(identity: Path | None, spec: Any, homes: list) -> dict[str, Any] | None:
    """The person's signed requests for ``spec``, one per partner home (None without --identity)."""
    if identity is None:
        return None
    from fedcustomer.analytics.requester import sign_query
    from fedcustomer.cli.identity import load_signer

    return sign_query(load_signer(identity), spec, [h.config().name for h in homes])


def query_cmd(
    spec: Path = typer.Option(..., "--spec", help="query spec file (.yaml / .yml / .json)"),
    data: str | None = typer.Option(
        None, help="synthetic | cdnow: set up simulated partners under OUT/partners"
    ),
    homes: Path | None = typer.Option(None, help="directory of existing partner homes to query"),
    partners: int = typer.Option(DEFAULT_PARTNERS, help="simulated partners (with --data)"),
    data_dir: Path | None = typer.Option(
        None, help="where cdnow/ lives (default $FEDCUSTOMER_DATA_DIR or ../shared/data)"
    ),
    budget: float = typer.Option(
        SIMULATED_EPSILON,
        help="epsilon target of newly simulated partners (one budget per partner, all datasets)",
    ),
    seed: int = typer.Option(DEFAULT_SEED, help="seed for simulated data (never for DP noise)"),
    out: Path = typer.Option(Path("runs/analytics"), help="directory for result.json / result.png"),
    as_json: bool = typer.Option(False, "--json", help="print result.json instead of a table"),
    identity: Path | None = AskerIdentityOpt,
) -> None:
    from fedcustomer.analytics.report import write_result
    from fedcustomer.analytics.runner import run_inprocess
    from fedcustomer.analytics.spec import load_spec

    query = load_spec(spec)
    partner_homes = _homes(data, homes, out, partners, seed, data_dir, budget)
    result = run_inprocess(partner_homes, query, requests=_signed(identity, query, partner_homes))
    write_result(out, result)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        print_result(result)


def rfm_cmd(
    data: str | None = typer.Option(None, help="synthetic | cdnow (default synthetic)"),
    homes: Path | None = typer.Option(
        None, help="directory of existing partner homes (then --show-truth is refused)"
    ),
    epsilon: float = typer.Option(1.0, help="epsilon each partner spends on this release"),
    partners: int = typer.Option(DEFAULT_PARTNERS, help="simulated partners"),
    data_dir: Path | None = typer.Option(
        None, help="where cdnow/ lives (default $FEDCUSTOMER_DATA_DIR or ../shared/data)"
    ),
    budget: float = typer.Option(
        SIMULATED_EPSILON,
        help="epsilon target of newly simulated partners (one budget per partner, all datasets)",
    ),
    confidence: float = typer.Option(0.95, help="interval level"),
    per_interval: bool = typer.Option(
        False,
        "--per-interval",
        help="each interval at --confidence on its own, instead of all of them together (simultaneous, Bonferroni)",
    ),
    seed: int = typer.Option(DEFAULT_SEED, help="seed for simulated data (never for DP noise)"),
    out: Path = typer.Option(Path("runs/rfm"), help="directory for rfm.json / rfm.png"),
    show_truth: bool = typer.Option(
        False, "--show-truth", help="also print true values (local simulated runs only)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print rfm.json instead of tables"),
    identity: Path | None = AskerIdentityOpt,
) -> None:
    from fedcustomer.analytics import rfm, runner
    from fedcustomer.analytics.customer import rfm_query
    from fedcustomer.analytics.report import write_result

    if show_truth and homes is not None:
        raise ConfigError(
            "--show-truth is only allowed for a local simulated run (--data synthetic|cdnow); partner homes given "
            "with --homes hold real customers whose true values must never be shown"
        )
    source = data or "synthetic"
    partner_homes = _homes(data, homes, out, partners, seed, data_dir, budget)
    dataset = runner.CDNOW_DATASET if source == "cdnow" else "retailer"
    config = rfm.PRESETS["cdnow" if source == "cdnow" else "synthetic"]
    spec = rfm_query(dataset, config, epsilon=epsilon, confidence=confidence)
    if not per_interval:  # all sizes and means inside their intervals together, at `confidence`
        intervals = 2 * len(spec.cells())
        spec = rfm_query(
            dataset,
            config,
            epsilon=epsilon,
            confidence=1 - (1 - confidence) / intervals,
            query_id=spec.query_id,
        )
    result = runner.run_inprocess(partner_homes, spec, requests=_signed(identity, spec, partner_homes))
    truth = runner.truth_rows(spec, runner.true_partials(partner_homes, spec)) if show_truth else None
    level = f"{confidence:.0%} {'per interval' if per_interval else 'simultaneous'}"
    write_result(out, result, truth=truth, name="rfm", interval_label=level, mean_bars="count")
    if as_json:
        payload = result.to_dict()
        if truth is not None:
            payload["truth"] = truth
        print(json.dumps(payload, indent=2, sort_keys=True))
        return
    print_rfm(result, truth, f"{level} intervals")
    console.print(f"wrote {out / 'rfm.json'} and {out / 'rfm.png'}")


@budget_app.command(
    "show",
    help="The partner's one budget, then every charge (training rounds and queries) and refusal per dataset.",
)
def budget_show(
    home: Path = typer.Option(..., help="partner home directory"),
    dataset: str | None = typer.Option(
        None, help="only this dataset's charges (the total stays partner-wide)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    report = budget_report(home, dataset)
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return
    t = report["totals"]
    console.print(
        f"[bold]{escape(report['partner'])}[/]: epsilon {t['epsilon']:.4g} of {t['epsilon_target']:g} "
        f"(delta {t['delta']:.1e} of {t['delta_target']:.0e}), over every release about its customers, "
        f"composed with {report['accountant']['accountant'].upper()}"
    )
    console.print(
        "distributed-DP rounds are charged against the coordinator (SecAgg+ trust accepted)"
        if report["secagg_trust"]
        else "distributed-DP rounds are charged against a single update (SecAgg+ trust not accepted)"
    )
    for ds in report["datasets"]:
        table = Table(title=f"releases about dataset {escape(ds['dataset'])}", caption=BUDGET_CAPTION)
        table.add_column("time (UTC)", no_wrap=True)
        table.add_column("run/query", overflow="fold")  # ids are folded onto more lines, never cut
        table.add_column("mechanism", overflow="fold")
        table.add_column("eps alone", justify="right", no_wrap=True)
        table.add_column("eps total", justify="right", no_wrap=True)
        table.add_column("delta", justify="right", no_wrap=True)
        for c in ds["charges"]:
            who = c["query_id"] or (f"{c['run_id']} r{c['round']}" if c["run_id"] else c["charge_key"])
            table.add_row(
                c["time"][:19],
                escape(str(who)),
                escape(_mechanism_cell(c)),
                f"{c['epsilon']:.4g}",
                f"{c['epsilon_total']:.4g}",
                "composed" if c["delta"] is None else f"{c['delta']:.1e}",
            )
        console.print(table)
        for r in ds["refusals"]:
            console.print(
                f"  refused {escape(r['charge_key'])} ({r['mechanism']}) at {r['time'][:19]}: "
                f"{escape(r['reason'])}"
            )


def _mechanism_cell(charge: dict[str, Any]) -> str:
    """The mechanism, with what a compliance officer needs beside it: a distributed round's charged view, an event."""
    details = charge.get("details") or {}
    parts = [str(charge["mechanism"])]
    if details.get("dp_mode") == "distributed":
        parts.append(
            "charged: coordinator (SecAgg+ trusted)"
            if details.get("charged") == "coordinator"
            else "charged: single update"
        )
    event = details.get("event_probability")
    if event:
        parts.append(f"event p {float(event):.1e} in delta")
    return "\n".join(parts)


@budget_app.command(
    "set", help="Set the partner's one privacy budget (covers every release about its customers)."
)
def budget_set(
    home: Path = typer.Option(..., help="partner home directory"),
    epsilon: float = typer.Option(
        ..., help="epsilon target over every release about the partner's customers"
    ),
    delta: float = typer.Option(..., help="delta target"),
    replace: bool = typer.Option(False, "--replace", help="change a budget that is already set"),
    accountant: str | None = typer.Option(
        None,
        help="how the spend is composed: rdp (Opacus, the default) or pld (dp-accounting, tighter); "
        "the whole history is recomposed with it from then on",
    ),
    identity: Path = typer.Option(
        ...,
        "--identity",
        envvar="FEDCUSTOMER_IDENTITY",
        help="your identity key file; your registered role must be allowed 'policy_edit' (partner_admin)",
    ),
) -> None:
    from fedcustomer.cli.identity import governed_home, load_signer
    from fedcustomer.data.store import PartnerStore
    from fedcustomer.privacy.dp.budget import DatasetBudget

    phome = governed_home(home)
    new = DatasetBudget(epsilon, delta)
    if accountant is not None:
        from fedcustomer.privacy.dp.accountants import accountant_named

        accountant = accountant_named(accountant).name  # refuses an unknown name
    signer = load_signer(identity)
    with phome.config_change() as config, PartnerStore.open(phome) as store:
        old, old_accountant = config.budget, config.accountant
        config.accountant = accountant or config.accountant
        if old is not None and not config.migrated_from and not replace:
            raise ConfigError(
                f"partner {config.name!r} already has epsilon {old.epsilon:g}, delta {old.delta:g}; "
                "pass --replace to change it"
            )
        spent = None
        if phome.ledger_path.exists():
            from fedcustomer.privacy.dp.ledger import BudgetLedger

            spent = BudgetLedger(phome.ledger_path, "-", new, config.accountant_spec()).spent()
        asked = {"epsilon": epsilon, "delta": delta, "replace": replace, "accountant": config.accountant}
        who = store.principal(signer, action="budget_set", audit_action="budget_set", extra=asked)
        store.require(who, "policy_edit", "budget_set", details=asked)
        previous = (
            None
            if old is None
            else {"epsilon": old.epsilon, "delta": old.delta, "accountant": old_accountant}
        )
        recorded = {"epsilon": epsilon, "delta": delta, "accountant": config.accountant, "previous": previous}
        config.budget = new
        phome.write_config_recorded(config, lambda: store.log(who, "budget_set", details=recorded))
    console.print(
        f"partner [bold]{escape(config.name)}[/]: budget epsilon {epsilon:g}, delta {delta:g}, "
        f"accountant {config.accountant}"
        + (f" (was {old.epsilon:g}, {old.delta:g}, {old_accountant})" if old else "")
    )
    if spent is not None and spent.epsilon > 0:
        console.print(
            f"already spent: epsilon {spent.epsilon:.4g}"
            + (
                " - past the new target: every further release will be refused"
                if spent.epsilon > epsilon
                else ""
            )
        )


BUDGET_CAPTION = (
    "eps alone: what that release would cost if it were the only one, at the budget's delta (a Gaussian "
    "query declared at a smaller delta reads lower here); eps total: the partner's spend "
    "after it, every release about its customers composed (all datasets; Gaussian ones with the accountant "
    "the row names, RDP or PLD, so a round adds less to the total than its eps alone); delta: a Laplace or "
    "randomised-response release's own, 'composed' for Gaussian ones (held at the budget's delta); --json for "
    "every row's details"
)


@budget_app.command(
    "verify",
    help="Recompute every ledger row's epsilon with the accounting libraries alone (Opacus RDP, "
    "dp-accounting PLD) and compare with what the ledger recorded, and every paid training round, "
    "split-learning round and query with the spend its audit entry kept; exit 7 on a mismatch.",
)
def budget_verify(
    home: Path = typer.Option(..., help="partner home directory"),
    tolerance: float = typer.Option(1e-6, help="relative difference allowed between recorded and recomputed"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    from fedcustomer.errors import IntegrityError
    from fedcustomer.partner.home import PartnerHome
    from fedcustomer.partner.ledger_audit import check_ledger_against_audit, log_entries
    from fedcustomer.privacy.dp.recompute import recompute

    phome = PartnerHome(home)
    config = phome.config()
    if not phome.ledger_path.exists():
        raise ConfigError(f"{home} has no ledger yet: nothing to verify")
    ledger = phome.ledger("-", config.budget_for())
    charges = ledger.all_charges()
    rows = recompute(charges, tolerance)
    bad = [r for r in rows if not r.ok]
    against_log = check_ledger_against_audit(charges, log_entries(phome.audit_dir))
    spent = ledger.spent()
    report = {
        "format": "fedcustomer.budget-verify/1",
        "partner": config.name,
        "accountant": config.accountant_spec().describe(),
        "epsilon_now": spent.epsilon,
        "rows": [r.to_dict() for r in rows],
        "mismatches": len(bad),
        "tolerance": tolerance,
        "against_audit_log": against_log.to_dict(),
    }
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        table = Table(title=f"ledger of {escape(config.name)}: recorded against recomputed")
        for col in ("seq", "release", "accountant", "eps total recorded", "recomputed", ""):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(
                str(r.seq),
                escape(r.charge_key),
                r.accountant,
                f"{r.recorded_total:.6g}",
                f"{r.recomputed_total:.6g}",
                "ok" if r.ok else "[red]MISMATCH[/]" + "".join(f"\n{escape(p)}" for p in r.problems),
            )
        console.print(table)
        console.print(
            f"{len(rows) - len(bad)} of {len(rows)} rows recompute; spend now {spent.epsilon:.4g} "
            f"with {config.accountant.upper()} over the whole history"
        )
        console.print(
            f"audit log: {against_log.summary()}"
            + "".join(f"\n[red]DISAGREES[/] {escape(k)}: {escape(p)}" for k, p in against_log.disagreements)
            + (
                f"\n{len(against_log.unlogged)} paid release(s) have no audit entry with their spend (a node "
                "stopped between paying and logging, or an earlier version, leaves one): "
                + ", ".join(escape(k) for k in against_log.unlogged[:5])
                if against_log.unlogged
                else ""
            )
        )
    if not against_log.ok:
        key, why = against_log.disagreements[0]
        raise IntegrityError(
            f"the ledger of partner {config.name!r} disagrees with its audit log on {against_log.disagreeing} "
            f"release(s) (first: "
            f"{key!r}: {why}); the log is hash-chained and anchored, the ledger is not"
        )
    if bad:
        first = bad[0]
        why = (
            first.problems[0]
            if first.problems
            else f"recorded {first.recorded_total:.6g}, recomputed {first.recomputed_total:.6g}"
        )
        raise IntegrityError(
            f"{len(bad)} ledger row(s) of partner {config.name!r} do not recompute (first: seq {first.seq}, "
            f"{first.charge_key!r}: {why})"
        )


def budget_report(home_dir: Path, dataset: str | None = None) -> dict[str, Any]:
    """The partner's total against its one budget, and charges and refusals per dataset (stable JSON)."""
    from fedcustomer.partner.home import PartnerHome
    from fedcustomer.privacy.dp.ledger import Spend

    home = PartnerHome(home_dir)
    config = home.config()
    budget = config.budget_for(dataset)
    out: list[dict[str, Any]] = []
    spent = Spend(0.0, 0.0, budget.epsilon, budget.delta)
    if not home.ledger_path.exists():  # nothing charged yet; a read does not create the ledger
        if dataset:
            out.append({"dataset": dataset, "charges": [], "refusals": []})
    else:
        names = [dataset] if dataset else home.ledger("-", budget).datasets()
        spent = home.ledger("-", budget).spent()
        for ds in names:
            ledger = home.ledger(ds, budget)
            out.append(
                {
                    "dataset": ds,
                    "charges": [c.to_dict() for c in ledger.charges()],
                    "refusals": ledger.refusals(),
                }
            )
    return {
        "format": "fedcustomer.budget/2",
        "partner": config.name,
        "home": str(home.root),
        "accountant": config.accountant_spec().describe(),
        "secagg_trust": config.secagg_trust,
        "totals": {
            "epsilon": spent.epsilon,
            "delta": spent.delta,
            "epsilon_target": spent.epsilon_target,
            "delta_target": spent.delta_target,
            "epsilon_remaining": spent.epsilon_remaining,
        },
        "datasets": out,
    }


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.4g}" if abs(x) < 1e4 else f"{x:,.0f}"


def print_result(result: Any) -> None:
    table = Table(
        title=f"{escape(result.query_id)}: {result.spec.kind} over {escape(result.spec.dataset)} "
        f"({len(result.partners)} partner{'' if len(result.partners) == 1 else 's'}, "
        f"{result.spec.confidence:.0%} intervals)"
    )
    for col in ("group", "statistic", "estimate", "interval"):
        table.add_column(col)
    for r in result.rows:
        group = ", ".join(f"{k}={v}" for k, v in r["group"].items()) or "all"
        stat = r["statistic"] + (f" {r['label']}" if r.get("label") else "")
        table.add_row(
            escape(group), escape(stat), _fmt(r["estimate"]), f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        )
    console.print(table)
    for name, reason in result.refused.items():
        console.print(f"[yellow]refused[/] {escape(name)}: {escape(reason)}")
    for note in result.notes:
        console.print(f"note: {escape(note)}")


def print_rfm(result: Any, truth: list[dict[str, Any]] | None, level: str) -> None:
    table = Table(
        title=f"RFM segments over {escape(result.spec.dataset)} ({len(result.partners)} partners, "
        f"epsilon {result.spec.epsilon:g} each, {level})"
    )
    cols = ["segment", "customers", "interval", "mean spend", "interval"]
    if truth is not None:
        cols[3:3] = ["true"]
        cols.append("true")
    for col in cols:
        table.add_column(col)
    for i, r in enumerate(result.rows):
        c = r["count"]
        cells = [r["group"]["segment"], _fmt(c["estimate"]), f"[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]"]
        if truth is not None:
            cells.append(_fmt(truth[i]["count"]))
        cells += [_fmt(r["estimate"]), f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"]
        if truth is not None:
            cells.append(_fmt(truth[i]["truth"]))
        table.add_row(*cells)
    console.print(table)
    for name, reason in result.refused.items():
        console.print(f"[yellow]refused[/] {escape(name)}: {escape(reason)}")
    for note in result.notes:
        console.print(f"note: {escape(note)}")
