"""`fedcustomer run-vertical`: split learning between a bank and a retailer from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from fedcustomer.cli.terminal import terminal
from fedcustomer.errors import FederationError
from fedcustomer.vertical.job import DEFAULTS as D

console = terminal()


def register(app: typer.Typer) -> None:
    app.command("run-vertical")(run_vertical)


def run_vertical(
    task: str = typer.Option(D["task"], help="repayment (label at the bank) or clv (label at the retailer)"),
    data: str = typer.Option(
        D["data"],
        help="synthetic | uci-credit (UCI split by columns) | own: the two parties' own data in --homes, each "
        "declared with `fedcustomer node setup --mode vertical`",
    ),
    data_dir: Path | None = typer.Option(
        None, help="where uci-credit lives (default: $FEDCUSTOMER_DATA_DIR)"
    ),
    rounds: int = typer.Option(
        D["rounds"], help="rounds (each about one expected pass over the shared customers)"
    ),
    steps_per_round: int | None = typer.Option(None, help="steps per round (default 1/q)"),
    batch_size: int = typer.Option(
        D["batch_size"], help="expected Poisson batch size chosen by the label owner"
    ),
    lr: float = typer.Option(D["lr"], help="learning rate at both parties"),
    optimizer: str = typer.Option(D["optimizer"], help="sgd | adam"),
    embed_dim: int = typer.Option(D["embed_dim"], help="embedding width of each bottom model"),
    epsilon: float = typer.Option(D["epsilon"], help="each party's epsilon target for its dataset"),
    delta: float = typer.Option(D["delta"], help="each party's delta target"),
    max_grad_norm: float = typer.Option(
        D["max_grad_norm"], help="per-sample clipping norm of the bottom models"
    ),
    no_dp: bool = typer.Option(
        False, "--no-dp", help="no DP at all (baseline only; releases are NOT private)"
    ),
    no_label_dp: bool = typer.Option(
        False, "--no-label-dp", help="return gradients from the TRUE labels (not protected; comparison only)"
    ),
    label_epsilon: float = typer.Option(
        D["label_epsilon"], help="part of the label owner's epsilon spent on protected labels"
    ),
    label_bound: float = typer.Option(
        D["label_bound"], help="clv: log1p spend is clipped to [0, bound] before label noise"
    ),
    embedding_noise: float = typer.Option(
        D["embedding_noise"], help="Gaussian noise multiplier on released embeddings (not accounted)"
    ),
    max_noise_multiplier: float = typer.Option(D["max_noise_multiplier"], help="cap on the calibrated noise"),
    customers: int = typer.Option(D["customers"], help="synthetic: customers per party"),
    shared_fraction: float = typer.Option(D["shared_fraction"], help="share of customers both parties hold"),
    retail_signal: float = typer.Option(
        D["retail_signal"],
        help="synthetic: strength of the default risk only retail behaviour shows (0 = none)",
    ),
    no_baseline: bool = typer.Option(
        False,
        "--no-baseline",
        help="skip the label-owner-only comparison model (its budget share goes to the joint model)",
    ),
    baseline_epsilon: float = typer.Option(
        D["baseline_epsilon"],
        help="part of the label owner's epsilon left for the label-owner-only comparison model (charged to its real ledger)",
    ),
    seed: int = typer.Option(D["seed"], help="seed for data, splits and initial weights (not for DP noise)"),
    out: Path = typer.Option(Path(D["out"]), help="run directory to write"),
    homes: Path | None = typer.Option(
        None,
        help="directory of the parties' homes (default OUT/partners; with --data own: required, two homes)",
    ),
    as_json: bool = typer.Option(False, "--json", help="print summary.json instead of tables"),
) -> None:
    """Train the joint model over the customers both parties share, each party's data staying at home."""
    from fedcustomer.vertical.job import VerticalJob
    from fedcustomer.vertical.runner import run_vertical_local

    job = VerticalJob(
        task=task,
        data=data,
        data_dir=str(data_dir) if data_dir else None,
        rounds=rounds,
        steps_per_round=steps_per_round,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        embed_dim=embed_dim,
        dp=not no_dp,
        epsilon=epsilon,
        delta=delta,
        max_grad_norm=max_grad_norm,
        label_dp=not no_label_dp,
        label_epsilon=label_epsilon,
        label_bound=label_bound,
        embedding_noise=embedding_noise,
        max_noise_multiplier=max_noise_multiplier,
        customers=customers,
        shared_fraction=shared_fraction,
        retail_signal=retail_signal,
        baseline=not no_baseline,
        baseline_epsilon=baseline_epsilon,
        seed=seed,
        out=str(out),
        homes=str(homes) if homes else None,
    )
    from fedcustomer.cli.progress import Progress

    progress = Progress()
    progress(
        f"vertical {task} on {data}: aligning the parties (PSI), then {rounds} rounds"
        + ("" if no_baseline else " and the label-owner-only baseline")
    )
    with progress.from_loggers("fedcustomer.vertical", "fedcustomer.psi.relay"):
        summary = run_vertical_local(job)
    progress(f"vertical job {summary['status']}")
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        _print(summary)
    if summary["status"] == "failed":
        raise FederationError(summary["stop_reason"] or "the vertical job failed")


def vertical_with_defaults(**options: object) -> None:
    """``fedcustomer run --mode vertical``: run-vertical with its defaults for the options not given."""
    import inspect

    params = inspect.signature(run_vertical).parameters
    unknown = set(options) - set(params)
    if unknown:
        raise TypeError(f"run-vertical has no option(s) {sorted(unknown)}")
    defaults = {name: p.default.default for name, p in params.items() if name not in options}
    run_vertical(**defaults, **options)


def _print(s: dict) -> None:
    metric = s["primary_metric"]
    console.print(
        f"vertical {s['task']} on {s['data']}: [bold]{s['status']}[/], "
        f"{s['rounds_completed']}/{s['rounds_planned']} rounds, PSI size {s['psi_size']}"
    )
    if s["stop_reason"]:
        console.print(f"stopped: {escape(s['stop_reason'])}")
    table = Table("model", f"held-out {metric}")
    base = s.get("baseline") or {}
    owner = next((p["name"] for p in s["partners"] if p["role"] == "active"), "label owner")
    if base:
        table.add_row(f"{owner}-only", _fmt(base.get("metrics", {}).get(metric)))
    table.add_row("vertical", _fmt(s["metrics"].get(metric)))
    console.print(table)
    budget = Table(
        "party",
        "role",
        "epsilon at last joint round",
        "all releases",
        "target",
        caption="epsilon at last joint round: the party's ledger total when it paid its last joint round "
        "(comparison-model rounds paid by then included); all releases: its ledger after this job",
    )
    for p in s["partners"]:
        budget.add_row(
            p["name"],
            p["role"],
            _fmt(p["epsilon_spent"]),
            _fmt(p.get("epsilon_spent_all_releases")),
            _fmt(p["epsilon_target"]),
        )
    console.print(budget)


def _fmt(v: object) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
