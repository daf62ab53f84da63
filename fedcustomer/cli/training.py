"""`fedcustomer run`, `demo` and `baseline`: federated training from the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedcustomer.cli.terminal import terminal
from fedcustomer.common.files import atomic_write_text
from fedcustomer.errors import AccessDenied, BudgetExhausted, ConfigError, FederationError
from fedcustomer.jobs.config import DEFAULT_DELTA, DEFAULT_EPSILON, DEFAULT_ROUNDS, DEFAULT_SEED
from fedcustomer.server.job import DEFAULTS as D  # torch-free: its defaults are the options' defaults
from fedcustomer.server.job import JobConfig

if TYPE_CHECKING:  # heavy modules (torch, flwr, pandas) load inside the commands, so --help stays fast
    from fedcustomer.data.features import FeatureSpec
    from fedcustomer.server.rounds import RoundReport

console = terminal()
err_console = terminal(stderr=True)  # notices while --json keeps stdout for the summary


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)
    app.command("baseline")(baseline)


def run(
    mode: str = typer.Option(
        "horizontal",
        help="horizontal (partners hold the same features) or vertical (bank + retailer split learning over shared customers; more options: `fedcustomer run-vertical --help`)",
    ),
    task: str = typer.Option(D["task"], help="repayment (default risk) or clv (customer lifetime value)"),
    data: str = typer.Option(
        D["data"],
        help="synthetic | uci-credit | cdnow | PATH to a CSV/Parquet file or a directory of per-partner files | with --homes, the NAME of a dataset the homes already hold",
    ),
    data_dir: Path | None = typer.Option(
        None,
        help="where uci-credit / cdnow files live (default: $FEDCUSTOMER_DATA_DIR, else the shipped data folder)",
    ),
    label: str | None = typer.Option(
        None, help="label column of a PATH data file (default: guessed, e.g. 'default' / 'future_spend')"
    ),
    feature_spec: Path | None = typer.Option(
        None,
        "--feature-spec",
        help="JSON file declaring the features, their public bounds and categories (write one with `fedcustomer features draft`), or a built-in encoding: uci-credit-dp (UCI credit encoded for DP training); default for a PATH: inferred from each partner's training rows, with a notice",
    ),
    split: str = typer.Option(D["split"], help="iid | non-iid partitioning of real data across partners"),
    partners: int | None = typer.Option(
        None, help=f"number of partner nodes (default {D['partners']}; with --homes: the homes it holds)"
    ),
    rounds: int = typer.Option(D["rounds"], help="federated rounds"),
    local_epochs: int = typer.Option(D["local_epochs"], help="local epochs per round"),
    batch_size: int = typer.Option(D["batch_size"], help="expected (Poisson) batch size"),
    lr: float = typer.Option(
        D["lr"],
        help="local learning rate (suits DP-SGD at the default clip: a step moves at most lr x clip; with --no-dp use about 0.1)",
    ),
    optimizer: str = typer.Option(D["optimizer"], help="sgd | adam"),
    arch: str = typer.Option(D["arch"], help="repayment: mlp | logreg; clv: mlp | linear"),
    epsilon: float = typer.Option(
        D["epsilon"],
        help="each partner's epsilon target (one budget per partner, over all its datasets, rounds and jobs; a home's own budget wins)",
    ),
    delta: float = typer.Option(D["delta"], help="each partner's delta target"),
    max_grad_norm: float = typer.Option(D["max_grad_norm"], help="per-sample clipping norm"),
    max_noise_multiplier: float = typer.Option(
        D["max_noise_multiplier"], help="cap on noise: past it partners train fewer rounds instead"
    ),
    no_dp: bool = typer.Option(
        False, "--no-dp", help="train without DP (baseline only; releases are NOT private)"
    ),
    clipping: str = typer.Option(D["clipping"], help="fast | ghost | hooks per-sample clipping"),
    strategy: str = typer.Option(
        D["strategy"], help="fedavg | fedprox | fedadam | fedmedian | fedtrimmedavg | krum"
    ),
    proximal_mu: float = typer.Option(D["proximal_mu"], help="FedProx proximal weight"),
    central_dp: bool = typer.Option(
        D["central_dp"], help="add partner-level central DP (server-side clipping + noise)"
    ),
    central_noise_multiplier: float = typer.Option(D["central_noise_multiplier"]),
    central_clipping_norm: float = typer.Option(D["central_clipping_norm"]),
    central_max_epsilon: float | None = typer.Option(
        None,
        help="with --central-dp: stop before the round that would take the partner-level epsilon past this "
        "(fedavg or fedprox)",
    ),
    central_accountant: str = typer.Option(
        D["central_accountant"], help="rdp | pld: how the partner-level epsilon is composed"
    ),
    min_partners: int = typer.Option(D["min_partners"], help="stop when fewer partners can train a round"),
    federated_eval: str = typer.Option(
        D["federated_eval"], help="every | final | none: held-out evaluation at the partners"
    ),
    clv_transform: str = typer.Option(D["clv_transform"], help="clv: log1p | raw target transform"),
    clv_spend_cap: float = typer.Option(
        D["clv_spend_cap"], help="clv: declared public cap on spend; labels are clipped to it for training"
    ),
    clv_loss: str = typer.Option(D["clv_loss"], help="clv: huber | mse | l1 on the target scaled to [0, 1]"),
    clv_huber_delta: float = typer.Option(D["clv_huber_delta"], help="clv: Huber delta in target units"),
    seed: int = typer.Option(
        D["seed"], help="seed for data generation, splits and initial weights (not for DP noise)"
    ),
    out: Path = typer.Option(Path(D["out"]), help="run directory to write"),
    homes: Path | None = typer.Option(
        None,
        help="directory of simulated partner homes (default OUT/partners); reuse it to keep budgets across jobs",
    ),
    resume: bool = typer.Option(False, help="continue the run in OUT from its last checkpoint"),
    as_json: bool = typer.Option(False, "--json", help="print summary.json instead of tables"),
    verbose: bool = typer.Option(False, help="show Flower's own log"),
) -> None:
    """Run one federated DP training job in the local simulation engine."""
    if mode == "vertical":
        from fedcustomer.cli.vertical import vertical_with_defaults

        vertical_with_defaults(
            task=task,
            data=data,
            data_dir=data_dir,
            rounds=rounds,
            epsilon=epsilon,
            delta=delta,
            no_dp=no_dp,
            seed=seed,
            out=out,
            homes=homes,
            as_json=as_json,
        )
        return
    if mode != "horizontal":
        raise ConfigError(f"--mode must be horizontal or vertical, got {mode!r}")
    if partners is None:
        partners = _homes_in(homes) or int(D["partners"])
    if resume and (out / "config.json").exists():
        job = JobConfig.from_dict(json.loads((out / "config.json").read_text()))
    else:
        job = JobConfig(
            task=task,
            data=data,
            data_dir=str(data_dir) if data_dir else None,
            label=label,
            feature_spec=_spec_ref(feature_spec),
            split=split,
            partners=partners,
            rounds=rounds,
            local_epochs=local_epochs,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            arch=arch,
            dp=not no_dp,
            epsilon=epsilon,
            delta=delta,
            max_grad_norm=max_grad_norm,
            max_noise_multiplier=max_noise_multiplier,
            clipping=clipping,
            strategy=strategy,
            proximal_mu=proximal_mu,
            central_dp=central_dp,
            central_noise_multiplier=central_noise_multiplier,
            central_clipping_norm=central_clipping_norm,
            central_max_epsilon=central_max_epsilon,
            central_accountant=central_accountant,
            min_partners=min_partners,
            federated_eval=federated_eval,
            clv_transform=clv_transform,
            clv_spend_cap=clv_spend_cap,
            clv_loss=clv_loss,
            clv_huber_delta=clv_huber_delta,
            seed=seed,
            out=str(out),
            homes=str(homes) if homes else None,
        )
    if resume:  # refuse a damaged or planted checkpoint before any partner starts
        from fedcustomer.server.report import RunRecorder

        RunRecorder.latest_checkpoint(out)
    else:  # an earlier run in OUT is kept whole, not overwritten or mixed with this one
        from fedcustomer.jobs.run_dir import RunDir

        kept = RunDir(out).set_aside_previous(job.run_id)
        if kept is not None:
            (err_console if as_json else console).print(
                f"[yellow]notice:[/] {escape(str(out))} held an earlier run; its files are now in "
                f"{escape(str(kept))} (use --resume to continue a run instead)"
            )
    summary = execute(job, resume=resume, quiet=as_json, verbose=verbose)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    finish(summary)


def _homes_in(homes: Path | None) -> int:
    """How many partner homes ``--homes`` holds (0 when none): the job's partner count by default."""
    if homes is None or not homes.is_dir():
        return 0
    return sum(1 for p in homes.iterdir() if (p / "partner.toml").is_file())


def execute(
    job: JobConfig, *, resume: bool = False, quiet: bool = False, verbose: bool = False
) -> dict[str, Any]:
    """Run a job with a progress bar per round."""
    from fedcustomer.apps.simulation import run_simulated_job
    from fedcustomer.models.metrics import PRIMARY_METRIC

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=False,
    ) as progress:
        bar = progress.add_task(f"{job.task} rounds", total=job.rounds, status="starting partners...")

        def on_round(report: RoundReport) -> None:
            metric = PRIMARY_METRIC[job.task]
            value = report.eval_metrics.get(metric)
            refused = sum(p.status == "refused" for p in report.partners)
            failed = sum(p.status == "failed" for p in report.partners)
            status = f"round {report.round}: {report.trained} trained"
            status += f", {refused} refused" if refused else ""
            status += f", {failed} failed" if failed else ""
            status += f", {metric} {value:.3f}" if value is not None else ""
            progress.update(bar, completed=report.round, status=status)

        return run_simulated_job(
            job,
            on_round=on_round,
            resume=resume,
            verbose=verbose,
            on_notice=lambda text: (err_console if quiet else progress.console).print(
                f"[yellow]notice:[/] {escape(text)}"
            ),
        )


def finish(summary: dict[str, Any]) -> None:
    """Exit codes: 0 when at least one round was aggregated; otherwise the cause's code."""
    if summary["rounds_completed"] > 0:
        return
    from fedcustomer.server.rounds import NON_PRIVATE_REFUSED

    reason = summary.get("stop_reason") or "no round completed"
    if "budget" in reason:
        raise BudgetExhausted(f"no round could be trained within the partners' privacy budgets: {reason}")
    if NON_PRIVATE_REFUSED in reason:
        raise AccessDenied(
            f"no round could be trained: {reason}; a partner admin opts in with [training] "
            "allow_non_private = true in partner.toml, or run the job with DP"
        )
    raise FederationError(reason)


def print_summary(summary: dict[str, Any], baselines: list[Any] | None = None) -> None:
    metric = summary["primary_metric"]
    status = summary["status"] + (f" ({summary['stop_reason']})" if summary.get("stop_reason") else "")
    console.print(
        f"\n[bold]{summary['task']}[/] run {summary['run_id']}: {summary['rounds_completed']}/"
        f"{summary['rounds_planned']} rounds, status {status}"
    )
    deltas = sorted({p["delta"] for p in summary["partners"] if p["delta"]})
    title = "privacy budget per partner" + (
        f" (delta {', '.join(f'{d:.0e}' for d in deltas)})" if deltas else ""
    )
    table = Table(title=title, caption="epsilon: spent / target; rounds: trained / refused / failed")
    table.add_column("partner", overflow="fold")
    table.add_column("epsilon", justify="right", no_wrap=True)
    table.add_column("rounds", justify="right", no_wrap=True)
    table.add_column(metric, justify="right", no_wrap=True)
    for p in summary["partners"]:
        m = summary["metrics_by_partner"].get(p["name"], {}).get(metric)
        table.add_row(
            p["name"],
            f"{_fmt(p['epsilon_spent'])} / {_fmt(p['epsilon_target'])}",
            f"{p['rounds_trained']} / {p['rounds_refused']} / {p['rounds_failed']}",
            _fmt(m),
        )
    console.print(table)
    results = Table(title="held-out metrics")
    results.add_column("model")
    keys = [k for k in summary["metrics"] if k != "loss"]
    for k in keys:
        results.add_column(_SHORT.get(k, k), justify="right", no_wrap=True)
    results.add_column("epsilon", justify="right", no_wrap=True)
    eps = (
        max((p["epsilon_spent"] or 0.0 for p in summary["partners"]), default=None) if summary["dp"] else None
    )
    results.add_row(
        f"federated {'DP ' if summary['dp'] else ''}{summary['strategy']}",
        *[_fmt(summary["metrics"].get(k)) for k in keys],
        _fmt(eps),
    )
    for b in baselines or []:
        results.add_row(b.name, *[_fmt(b.metrics.get(k)) for k in keys], _fmt(b.epsilon))
    console.print(results)
    from fedcustomer.server.calibration import calibration_warning

    warning = calibration_warning(summary.get("calibration"))
    if warning is not None:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if summary.get("central_dp"):
        c = summary["central_dp"]
        cap = f", maximum {c['max_epsilon']:g}" if c.get("max_epsilon") is not None else ""
        console.print(
            f"central DP (partner-level): epsilon {c['epsilon']:.3f} at delta {c['delta']:.0e} "
            f"({str(c.get('accountant', 'rdp')).upper()}{cap})"
        )


# Unclipped SGD needs a smaller step than DP-SGD (whose clipped steps are bounded).
CENTRAL_NON_PRIVATE_LR = 0.1

_SHORT = {"top_decile_capture": "top10%", "accuracy": "acc"}


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return str(value)


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="directory for both runs"),
    rounds: int = typer.Option(DEFAULT_ROUNDS, help="rounds per job"),
    epsilon: float = typer.Option(
        DEFAULT_EPSILON,
        help="each partner's epsilon target (its one budget; the demo's homes are fresh each run)",
    ),
    seed: int = typer.Option(DEFAULT_SEED),
) -> None:
    """Synthetic bank + retailer federation: a DP repayment job and a DP CLV job, with baselines.

    Each demo run writes a fresh directory under OUT (OUT/latest points to it) with fresh
    partner homes: its customers are synthetic, so a second demo is a new federation and
    gives the same result within DP noise instead of drawing on the first run's budgets.
    """
    from fedcustomer.data.sources import load_partitions
    from fedcustomer.jobs.config import new_run_id
    from fedcustomer.models.baseline import train_centralised

    base = out / new_run_id()
    base.mkdir(parents=True, exist_ok=False)
    _point_latest(out, base)
    console.print(f"demo run directory: {base} (fresh synthetic partners; {out / 'latest'} points here)")
    results: dict[str, Any] = {}
    summaries = []
    for task, partners in (("repayment", 3), ("clv", 2)):
        console.rule(f"[bold]{task}: federated DP-SGD across {partners} synthetic partners")
        job = JobConfig(
            task=task,
            data="synthetic",
            partners=partners,
            rounds=rounds,
            epsilon=epsilon,
            seed=seed,
            out=str(base / task),
            min_partners=2,
        )
        summary = execute(job)
        spec, datasets = load_partitions(task, "synthetic", partners, seed=seed)
        central = train_centralised(
            spec,
            datasets,
            arch=job.arch,
            epochs=rounds,
            batch_size=job.batch_size,
            lr=CENTRAL_NON_PRIVATE_LR,
            seed=seed,
        )
        print_summary(summary, [central])
        results[task] = {
            "summary": f"{base / task / 'summary.json'}",
            "federated": summary["metrics"],
            "centralised_non_private": central.metrics,
            "partners": [
                {k: p[k] for k in ("name", "epsilon_spent", "epsilon_target")} for p in summary["partners"]
            ],
        }
        summaries.append(summary)
        finish(summary)
    atomic_write_text(base / "demo.json", json.dumps(results, indent=2) + "\n")
    console.print(
        f"\nrun directories: {base / 'repayment'}  {base / 'clv'}  (summary.json, metrics.csv, model.pt, plots/)"
    )
    short = [s for s in summaries if s["rounds_completed"] < s["rounds_planned"]]
    if short:
        raise BudgetExhausted(
            "the demo stopped early: "
            + "; ".join(
                f"{s['task']} trained {s['rounds_completed']} of {s['rounds_planned']} rounds ({s.get('stop_reason')})"
                for s in short
            )
        )


def _point_latest(parent: Path, target: Path) -> None:
    """Make ``parent/latest`` name the newest run (a symlink, replaced atomically)."""
    link = parent / "latest"
    if link.exists() and not link.is_symlink():
        console.print(f"{link} is not a link (kept as it is); this run is in {target}")
        return
    tmp = parent / f".latest-{target.name}"
    tmp.symlink_to(target.name)
    os.replace(tmp, link)


def baseline(
    task: str = typer.Option(D["task"]),
    data: str = typer.Option(D["data"]),
    data_dir: Path | None = typer.Option(None),
    label: str | None = typer.Option(None),
    feature_spec: Path | None = typer.Option(
        None, "--feature-spec", help="JSON feature spec for a PATH data file"
    ),
    split: str = typer.Option(D["split"]),
    partners: int = typer.Option(D["partners"]),
    arch: str = typer.Option(D["arch"]),
    epochs: int = typer.Option(5),
    batch_size: int = typer.Option(256),
    lr: float = typer.Option(CENTRAL_NON_PRIVATE_LR),
    epsilon: float = typer.Option(DEFAULT_EPSILON),
    delta: float = typer.Option(DEFAULT_DELTA),
    seed: int = typer.Option(DEFAULT_SEED),
    out: Path | None = typer.Option(None, help="write baseline.json here"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Centralised non-private and centralised DP training on the same pooled splits."""
    from fedcustomer.cli.progress import Progress
    from fedcustomer.data.sources import load_partitions
    from fedcustomer.models.baseline import gradient_boosting, train_centralised

    JobConfig(
        task=task, data=data, split=split, partners=partners, arch=arch, epsilon=epsilon, delta=delta
    )  # validates

    progress = Progress()
    notices: list[str] = []
    with progress.phase(f"loading {data} for {partners} partners"):
        spec, datasets = load_partitions(
            task,
            data,
            partners,
            split=split,
            seed=seed,
            data_dir=data_dir,
            label=label,
            notices=notices,
            spec=_declared(feature_spec),
        )
    for notice in notices:
        err_console.print(f"[yellow]notice:[/] {escape(notice)}")
    common = dict(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    results = []
    with progress.phase(f"(1/3) centralised non-private {arch}, {epochs} epochs"):
        results.append(train_centralised(spec, datasets, **common))
    with progress.phase(f"(2/3) centralised DP-SGD {arch}, {epochs} epochs, epsilon {epsilon:g}"):
        results.append(
            train_centralised(spec, datasets, dp=True, epsilon_target=epsilon, delta=delta, **common)
        )
    with progress.phase("(3/3) gradient boosting"):
        results.append(gradient_boosting(spec, datasets, seed=seed))
    payload = [
        {
            "name": r.name,
            "metrics": r.metrics,
            "epsilon": r.epsilon,
            "delta": delta if r.epsilon else None,
            "noise_multiplier": r.noise_multiplier,
            "train_rows": r.train_rows,
            "test_rows": r.test_rows,
        }
        for r in results
    ]
    if out:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "baseline.json", json.dumps(payload, indent=2) + "\n")
    if as_json:
        print(json.dumps(payload, indent=2))
        return
    table = Table(title=f"centralised baselines: {task} on {data}")
    keys = list(results[0].metrics)
    table.add_column("model")
    for k in keys:
        table.add_column(k, justify="right")
    table.add_column("epsilon", justify="right")
    for r in results:
        table.add_row(r.name, *[_fmt(r.metrics.get(k)) for k in keys], _fmt(r.epsilon))
    console.print(table)


def _spec_ref(feature_spec: Path | None) -> str | None:
    """What the job records for ``--feature-spec``: a built-in name as given, a file as an absolute path."""
    from fedcustomer.server.deployment import BUILTIN_SPECS

    if feature_spec is None:
        return None
    return str(feature_spec) if str(feature_spec) in BUILTIN_SPECS else str(feature_spec.resolve())


def _declared(feature_spec: Path | None) -> FeatureSpec | None:
    from fedcustomer.server.deployment import load_declared_spec

    ref = _spec_ref(feature_spec)
    return load_declared_spec(ref) if ref is not None else None
