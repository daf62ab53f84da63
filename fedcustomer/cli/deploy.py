"""Deployment commands: ``certs``, ``coordinator start|register|run``; the ``node`` group, whose
commands live in :mod:`fedcustomer.cli.deploy_node`, :mod:`fedcustomer.cli.node_trust` and
:mod:`fedcustomer.cli.node_setup`.

Thin shells over :mod:`fedcustomer.deploy`. ``start`` commands run Flower's
SuperLink / SuperNode in the foreground (what a service manager or container
expects); security is on unless ``--insecure`` is given explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from fedcustomer.cli.deploy_summary import partner_lines, stopped_reason
from fedcustomer.cli.foreground import foreground, warn_insecure
from fedcustomer.cli.terminal import terminal
from fedcustomer.errors import ConfigError, FederationError, KeyMaterialError
from fedcustomer.jobs.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DATA,
    DEFAULT_DELTA,
    DEFAULT_EPSILON,
    DEFAULT_LOCAL_EPOCHS,
    DEFAULT_LR,
    DEFAULT_MAX_GRAD_NORM,
    DEFAULT_MIN_PARTNERS,
    DEFAULT_PARTNERS,
    DEFAULT_ROUNDS,
    DEFAULT_SEED,
    DEFAULT_STRATEGY,
    DEFAULT_TASK,
)

console = terminal()
err = terminal(stderr=True)

coordinator_app = typer.Typer(
    help="The coordinator: Flower SuperLink + the fedcustomer ServerApp.", no_args_is_help=True
)
node_app = typer.Typer(
    help="A partner's node: Flower SuperNode on the partner's own home.", no_args_is_help=True
)

WorkdirOpt = typer.Option(
    None,
    "--workdir",
    show_default=False,
    help="Coordinator state directory (SuperLink db, log, job); default "
    "$XDG_DATA_HOME/fedcustomer/coordinator (~/.local/share/...), outside any checkout.",
)
WaitOpt = typer.Option(
    60.0, "--wait", help="Seconds to wait for a coordinator started a moment ago to answer."
)


def _workdir(workdir: Path | None) -> Path:
    from fedcustomer.deploy.paths import default_coordinator_dir

    return (workdir if workdir is not None else default_coordinator_dir()).expanduser().resolve()


def _progress(text: str) -> None:
    err.print(f"[dim]{escape(text)}[/]")


def register(app: typer.Typer) -> None:
    """Attach the deployment commands to the root ``fedcustomer`` app."""
    app.command("certs", help="Create a development CA and server certificate (TLS) for the coordinator.")(
        certs_cmd
    )
    app.add_typer(coordinator_app, name="coordinator")
    app.add_typer(node_app, name="node")
    from fedcustomer.cli import deploy_node, node_setup, node_trust

    deploy_node.register(node_app)  # `node prepare`, `node start`
    node_trust.register(node_app)  # `node keys`, `node pin-peer`: signed, audited trust changes
    node_setup.register(node_app)  # `node setup`: a party's own data for vertical jobs


# --- certificates ------------------------------------------------------------------------
def certs_cmd(
    out: Path | None = typer.Option(
        None,
        "--out",
        show_default=False,
        help="Directory for ca.crt, ca.key, server.pem, server.key; default "
        "$XDG_DATA_HOME/fedcustomer/certs (~/.local/share/...), outside any checkout.",
    ),
    host: list[str] = typer.Option(
        ["localhost", "127.0.0.1", "::1"],
        "--host",
        help="Host name or IP the nodes use to reach the coordinator (repeatable).",
    ),
    days: int = typer.Option(365, "--days", help="Validity in days."),
    force: bool = typer.Option(False, "--force", help="Replace existing certificates."),
) -> None:
    from fedcustomer.deploy.paths import default_certs_dir
    from fedcustomer.deploy.pki import make_dev_certificates

    out = (out if out is not None else default_certs_dir()).expanduser()
    if days < 1:
        raise ConfigError(f"--days must be >= 1, got {days}")
    c = make_dev_certificates(out, host, days=days, overwrite=force)
    console.print(f"CA certificate      {c.ca_cert}  (give this to every partner node: --root-cert)")
    console.print(f"server certificate  {c.server_cert}  for {', '.join(host)}")
    console.print(f"server key          {c.server_key}  (coordinator only, 0600)")
    console.print(f"CA key              {c.ca_key}  (keep offline; development use only)")


# --- coordinator -------------------------------------------------------------------------
@coordinator_app.command(
    "start", help="Start the SuperLink (foreground) with TLS and SuperNode authentication."
)
def coordinator_start(
    workdir: Path | None = WorkdirOpt,
    certs: Path | None = typer.Option(None, "--certs", help="Directory with ca.crt, server.pem, server.key."),
    host: str = typer.Option("0.0.0.0", "--host", help="Address to listen on."),
    port: int = typer.Option(9093, "--port", help="Port for the Fleet, Control and Runtime APIs."),
    connect_host: str = typer.Option(
        "127.0.0.1", "--connect-host", help="Address this machine's `flwr` uses."
    ),
    health_port: int | None = typer.Option(None, "--health-port", help="Plain gRPC health-check port."),
    insecure: bool = typer.Option(False, "--insecure", help="NO TLS, NO node authentication (tests only)."),
    serverapp: str | None = typer.Option(
        None,
        "--serverapp",
        help="warm (default on Linux): a ServerApp executor that imported everything once serves every job; "
        "subprocess: Flower's own, a fresh flwr-serverapp process per job.",
        show_default=False,
    ),
) -> None:
    from fedcustomer.deploy.coordinator import (
        DEFAULT_SERVERAPP,
        WARM,
        CoordinatorDir,
        check_serverapp,
        superlink_command,
        warm_coordinator_command,
        write_flwr_config,
    )
    from fedcustomer.deploy.flower import flower_env
    from fedcustomer.deploy.pki import Certificates

    cdir = CoordinatorDir(_workdir(workdir))
    cdir.root.mkdir(parents=True, exist_ok=True)
    if insecure:
        warn_insecure(err)
        the_certs = None
    else:
        if certs is None:
            raise ConfigError(
                "--certs DIR is required (create one with `fedcustomer certs --out DIR`), "
                "or pass --insecure explicitly for a closed test network"
            )
        the_certs = Certificates.in_dir(certs.resolve())
    mode = check_serverapp(serverapp or DEFAULT_SERVERAPP)
    cmd = superlink_command(
        cdir,
        host=host,
        port=port,
        certs=the_certs,
        node_auth=not insecure,
        health_port=health_port,
        serverapp=mode,
    )
    if mode == WARM:
        cmd = warm_coordinator_command(cdir, cmd, f"{connect_host}:{port}", the_certs)
    write_flwr_config(cdir, f"{connect_host}:{port}", the_certs.ca_cert if the_certs else None)
    console.print(f"coordinator state in {cdir.root}; Flower CLI config: FLWR_HOME={cdir.flwr_home}")
    name = "the coordinator (SuperLink and warm ServerApp executor)" if mode == WARM else None
    foreground(cmd, flower_env(cdir.flwr_home), cwd=cdir.root, name=name)


@coordinator_app.command("register", help="Allow a partner node's public key to join (SuperNode auth).")
def coordinator_register(
    public_key: Path = typer.Argument(..., help="The node's supernode.pub (from `fedcustomer node keys`)."),
    workdir: Path | None = WorkdirOpt,
    name: str | None = typer.Option(None, "--name", help="Partner name shown in `flwr supernode ls`."),
    wait: float = WaitOpt,
) -> None:
    from fedcustomer.deploy.coordinator import CoordinatorDir, register_node, wait_for_coordinator
    from fedcustomer.deploy.pki import NodeKeys

    if not public_key.is_file():
        raise KeyMaterialError(
            f"{public_key} not found; the partner creates it with `fedcustomer node keys --home DIR`"
        )
    cdir = CoordinatorDir(_workdir(workdir))
    wait_for_coordinator(cdir, timeout=wait, progress=_progress)
    node_id = register_node(cdir, public_key, name)
    fp = NodeKeys(public_key, public_key).fingerprint()
    console.print(f"registered node {node_id} ({name or public_key.name}), key {fp}")


@coordinator_app.command("run", help="Submit a federated job to the running coordinator and wait for it.")
def coordinator_run(
    workdir: Path | None = WorkdirOpt,
    mode: str = typer.Option(
        "horizontal",
        "--mode",
        help="horizontal (partners hold the same columns), vertical (bank + retailer split learning "
        "over their shared customers) or psi (their private set intersection only).",
    ),
    task: str = typer.Option(DEFAULT_TASK, "--task"),
    data: str = typer.Option(
        DEFAULT_DATA,
        "--data",
        help="Data source the partners hold (names their dataset); vertical/psi: synthetic, uci-credit, or own "
        "(each party's dataset and spec, declared with `fedcustomer node setup --mode vertical`).",
    ),
    feature_spec: str | None = typer.Option(
        None, "--feature-spec", help="synthetic:repayment, synthetic:clv, uci-credit, cdnow, or a JSON path."
    ),
    partners: int = typer.Option(DEFAULT_PARTNERS, "--partners", help="Partner nodes expected."),
    min_partners: int = typer.Option(
        DEFAULT_MIN_PARTNERS, "--min-partners", help="Fewest partners a round may complete with."
    ),
    rounds: int | None = typer.Option(
        None, "--rounds", help=f"default {DEFAULT_ROUNDS} (horizontal), 8 (vertical)", show_default=False
    ),
    local_epochs: int = typer.Option(DEFAULT_LOCAL_EPOCHS, "--local-epochs"),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        help=f"default {DEFAULT_BATCH_SIZE} (horizontal), 512 (vertical)",
        show_default=False,
    ),
    lr: float | None = typer.Option(
        None,
        "--lr",
        help=f"Learning rate; default {DEFAULT_LR} (horizontal), 0.05 (vertical).",
        show_default=False,
    ),
    max_grad_norm: float | None = typer.Option(
        None,
        "--max-grad-norm",
        help=f"DP-SGD per-example clip norm C; default {DEFAULT_MAX_GRAD_NORM} (horizontal; distributed DP: "
        "the clip of the union's step), 1.0 (vertical bottom models).",
        show_default=False,
    ),
    steps_per_round: int | None = typer.Option(
        None, "--steps-per-round", help="vertical: steps per round (default one expected pass)."
    ),
    no_baseline: bool = typer.Option(
        False, "--no-baseline", help="vertical: skip the label owner's own comparison model."
    ),
    reveal: str = typer.Option(
        "ids",
        "--reveal",
        help="psi: ids (each party keeps the shared customers), count (their number only) or sum (a DP rate).",
    ),
    sum_value: str | None = typer.Option(
        None, "--value", help="psi --reveal sum: the bank's numeric column."
    ),
    sum_where: str | None = typer.Option(
        None, "--where", help="psi --reveal sum: the retailer's boolean column."
    ),
    sum_epsilon: float | None = typer.Option(
        None,
        "--sum-epsilon",
        help="psi --reveal sum: charged to each party (half count, half sum); default 1.",
    ),
    value_max: float | None = typer.Option(
        None, "--value-max", help="psi --reveal sum: values clipped to [0, this]."
    ),
    count_epsilon: float | None = typer.Option(
        None,
        "--count-epsilon",
        help="psi --reveal count: publish a DP count, this epsilon charged to both parties.",
    ),
    psi_chunk_size: int | None = typer.Option(
        None,
        "--psi-chunk-size",
        help="psi/vertical: ids per PSI message (default 1,000,000; 100,000 with --reveal sum).",
    ),
    epsilon: float = typer.Option(
        DEFAULT_EPSILON,
        "--epsilon",
        help="Budget asked for (recorded in summary.json); each partner's own budget, set with `fedcustomer budget set`, decides.",
    ),
    delta: float = typer.Option(DEFAULT_DELTA, "--delta"),
    strategy: str = typer.Option(DEFAULT_STRATEGY, "--strategy"),
    federated_eval: str = typer.Option("final", "--federated-eval", help="every, final or none."),
    round_timeout: float = typer.Option(
        120.0, "--round-timeout", help="Seconds to wait for replies in a round."
    ),
    wait_for_partners: float = typer.Option(
        120.0, "--wait-for-partners", help="Seconds to wait for nodes to connect."
    ),
    seed: int = typer.Option(DEFAULT_SEED, "--seed"),
    out: Path = typer.Option(Path("runs/deployed"), "--out", help="Run directory (on the coordinator)."),
    secagg: bool = typer.Option(
        False, "--secagg", help="Aggregate with Flower's SecAgg+ (coordinator sees only sums)."
    ),
    dp_mode: str = typer.Option(
        "local",
        "--dp-mode",
        help="local, or distributed: with --secagg, one DP-SGD step over the union per round (docs/PRIVACY.md).",
    ),
    sample_rate: float = typer.Option(
        0.0, "--sample-rate", help="Distributed DP: every partner's Poisson rate q (required there)."
    ),
    distributed_accountant: str = typer.Option(
        "auto",
        "--distributed-accountant",
        help="Distributed DP: the accountant the noise is calibrated with: rdp, pld, or auto (ask the "
        "partners: pld when all of them account with pld, else rdp).",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Resume the last job in --workdir from its checkpoint."
    ),
    timeout: float = typer.Option(3600.0, "--timeout", help="Give up waiting after this many seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json."),
    wait: float = WaitOpt,
) -> None:
    from fedcustomer.deploy.coordinator import (
        CoordinatorDir,
        ending_poll,
        file_rewritten,
        list_nodes,
        partner_shortfall,
        pin_spec,
        read_summary,
        run_config_for,
        submit_run,
        wait_for_coordinator,
        wait_run,
        write_app,
    )
    from fedcustomer.server.deployment import default_spec_ref
    from fedcustomer.server.job import JobConfig

    if mode != "horizontal":
        from fedcustomer.cli.deploy_two_party import run_two_party_job

        options = {
            "task": task,
            "data": data,  # own: each party's declared dataset and spec (`node setup --mode vertical`)
            "rounds": rounds,
            "steps_per_round": steps_per_round,
            "batch_size": batch_size,
            "lr": lr,
            "max_grad_norm": max_grad_norm,
            "epsilon": epsilon,
            "delta": delta,
            "round_timeout": round_timeout,
            "seed": seed,
            "baseline": not no_baseline,
            "out": str(out),
        }
        run_two_party_job(
            _workdir(workdir),
            mode=mode,
            reveal=reveal,
            count_epsilon=count_epsilon,
            psi_chunk_size=psi_chunk_size,
            sum_options={
                "value": sum_value,
                "where": sum_where,
                "epsilon": sum_epsilon,
                "value_max": value_max,
            },
            job_options=options,
            wait_for_partners=wait_for_partners,
            resume=resume,
            timeout=timeout,
            as_json=as_json,
            wait=wait,
        )
        return
    rounds = DEFAULT_ROUNDS if rounds is None else rounds
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    lr = DEFAULT_LR if lr is None else lr
    max_grad_norm = DEFAULT_MAX_GRAD_NORM if max_grad_norm is None else max_grad_norm
    cdir = CoordinatorDir(_workdir(workdir))
    if resume:
        if not cdir.job_path.exists():
            raise ConfigError(f"--resume: no earlier job in {cdir.root}")
        cfg = json.loads(cdir.job_path.read_text(encoding="utf-8"))
    else:
        job = JobConfig(
            task=task,
            data=data,
            partners=partners,
            min_partners=min_partners,
            rounds=rounds,
            local_epochs=local_epochs,
            batch_size=batch_size,
            lr=lr,
            max_grad_norm=max_grad_norm,
            epsilon=epsilon,
            delta=delta,
            strategy=strategy,
            federated_eval=federated_eval,
            round_timeout=round_timeout,
            seed=seed,
            out=str(out),
            dp_mode=dp_mode,
            sample_rate=sample_rate,
            distributed_accountant=distributed_accountant,
        )
        if dp_mode == "distributed" and not secagg:
            raise ConfigError("--dp-mode distributed needs --secagg: the coordinator must see only the sum")
        cfg = run_config_for(
            job,
            feature_spec=pin_spec(cdir, feature_spec or default_spec_ref(job)),
            wait_for_partners=wait_for_partners,
            secagg=secagg,
        )
        write_app(cdir, cfg)
    wait_for_coordinator(cdir, timeout=wait, progress=_progress)
    flwr_run_id = submit_run(cdir, resume=resume)
    err.print(
        f"submitted job {cfg['run-id']} as Flower run {flwr_run_id}; waiting (up to "
        f"{cfg.get('wait-for-partners', wait_for_partners):g} s for {cfg.get('partners', partners)} partners, "
        f"then {cfg.get('rounds', rounds)} rounds) ..."
    )
    ended = file_rewritten(Path(str(cfg["out"])) / "summary.json")
    status = wait_run(
        cdir,
        flwr_run_id,
        timeout=timeout,
        progress=_progress,
        finished_hint=ended,
        ending_poll=ending_poll(),
    )
    summary = read_summary(cfg, cdir, flwr_run_id)
    if as_json:
        console.print_json(json.dumps(summary))
    else:
        console.print(
            f"Flower run {flwr_run_id}: {status['status']}; job {summary['status']} "
            f"({summary['rounds_completed']}/{summary['rounds_planned']} rounds), results in {cfg['out']}"
        )
        for line in partner_lines(summary):
            console.print(f"  {escape(line)}")
    if summary["status"] != "completed" or not summary.get("rounds_completed"):
        raise FederationError(stopped_reason(summary))
    wanted = int(cfg.get("partners", partners))
    try:
        nodes = list_nodes(cdir)
    except FederationError:
        nodes = None
    short = partner_shortfall(summary, wanted, nodes)
    if short:
        raise FederationError(f"the job completed without every partner: {short}")
