"""``fedcustomer node prepare|start``: a partner's node, on the partner's own home.

Thin shells over :mod:`fedcustomer.deploy.node` and :mod:`fedcustomer.deploy.two_party`. Kept apart
from :mod:`fedcustomer.cli.deploy` (the coordinator's commands), which owns the ``node`` group and
adds these two commands to it; ``start`` runs the SuperNode in the foreground.
"""

from __future__ import annotations

import signal
from pathlib import Path

import typer
from rich.markup import escape

from fedcustomer.cli.foreground import foreground, warn_insecure
from fedcustomer.cli.terminal import terminal
from fedcustomer.errors import ConfigError, FederationError, KeyMaterialError
from fedcustomer.jobs.config import (
    DEFAULT_DATA,
    DEFAULT_DELTA,
    DEFAULT_EPSILON,
    DEFAULT_PARTNERS,
    DEFAULT_SEED,
    DEFAULT_SPLIT,
    DEFAULT_TASK,
)

console = terminal()
err = terminal(stderr=True)


def register(node_app: typer.Typer) -> None:
    """Attach ``prepare`` and ``start`` to the ``node`` group."""
    node_app.command(
        "prepare", help="Give a partner home its split of a built-in data source (demo, tests)."
    )(node_prepare)
    node_app.command("start", help="Start this partner's SuperNode (foreground), joining the coordinator.")(
        node_start
    )


def node_prepare(
    home: Path = typer.Option(..., "--home"),
    partner: str = typer.Option(..., "--partner", help="Partner name, e.g. bank0."),
    task: str = typer.Option(DEFAULT_TASK, "--task"),
    data: str = typer.Option(DEFAULT_DATA, "--data", help="synthetic, uci-credit or cdnow."),
    index: int | None = typer.Option(
        None, "--index", help="Which split this partner holds (0-based); horizontal only."
    ),
    mode: str = typer.Option(
        "horizontal", "--mode", help="horizontal (a split of a source) or vertical (bank or retailer)."
    ),
    customers: int = typer.Option(20000, "--customers", help="vertical: synthetic customers per party."),
    partners: int = typer.Option(DEFAULT_PARTNERS, "--partners", help="Number of splits."),
    seed: int = typer.Option(
        DEFAULT_SEED, "--seed", help="Same seed on every partner gives disjoint splits."
    ),
    split: str = typer.Option(DEFAULT_SPLIT, "--split"),
    epsilon: float = typer.Option(DEFAULT_EPSILON, "--epsilon"),
    delta: float = typer.Option(DEFAULT_DELTA, "--delta"),
) -> None:
    if mode == "vertical":
        from fedcustomer.cli.identity import passphrase
        from fedcustomer.deploy.node_trust import home_has_people
        from fedcustomer.deploy.two_party import give_demo_admin, prepare_party_home
        from fedcustomer.partner.home import PartnerHome

        secret = None
        if not ((home / "store.db").exists() and home_has_people(PartnerHome(home))):
            secret = passphrase("passphrase for the demo admin's identity key: ", confirm=True)
            if secret is None or len(secret) < 12:
                raise ConfigError(
                    "the demo home gets a partner admin with an encrypted identity key: set "
                    "FEDCUSTOMER_PASSPHRASE (at least 12 characters) or run on a terminal to be asked"
                )
        h = prepare_party_home(
            home,
            partner,
            task=task,
            customers=customers,
            seed=seed,
            epsilon=epsilon,
            delta=delta,
        )
        console.print(f"party {partner} ready in {h.root} (vertical {task}, synthetic)")
        if secret is not None:
            key = give_demo_admin(h, partner, secret)
            console.print(
                f"demo partner admin '{partner}-admin' registered; identity key {escape(str(key))} "
                "(pass it as --identity to node keys, node pin-peer and node setup)"
            )
        return
    if mode != "horizontal":
        raise ConfigError(f"--mode must be horizontal or vertical, got {mode!r}")
    if index is None:
        raise ConfigError("--index is required for a horizontal partner (which split it holds)")
    from fedcustomer.deploy.node import prepare_node_home

    h = prepare_node_home(
        home,
        partner,
        task=task,
        data=data,
        index=index,
        partners=partners,
        seed=seed,
        split=split,
        epsilon=epsilon,
        delta=delta,
    )
    console.print(f"partner {partner} ready in {h.root} (split {index} of {partners})")


def node_start(
    partner: str = typer.Option(..., "--partner"),
    home: Path = typer.Option(..., "--home"),
    superlink: str = typer.Option(..., "--superlink", help="Coordinator address HOST:PORT."),
    root_cert: Path | None = typer.Option(None, "--root-cert", help="The coordinator's CA certificate."),
    auth_key: Path | None = typer.Option(
        None, "--auth-key", help="Private key (default HOME/keys/supernode)."
    ),
    runtime_port: int = typer.Option(
        9094, "--runtime-port", help="Local port for Flower's ClientApp process."
    ),
    insecure: bool = typer.Option(False, "--insecure", help="NO TLS (tests only)."),
    clientapp: str | None = typer.Option(
        None,
        "--clientapp",
        help="warm (default on Linux: one executor process, imports and a run's party state kept between "
        "messages) or subprocess (Flower's default: a fresh ClientApp process per message).",
        show_default=False,
    ),
    poll: str = typer.Option(
        "adaptive",
        "--poll",
        help="adaptive (default: the SuperNode asks the coordinator again 0.05 s after traffic, backing off "
        "to 1 s when idle) or flower (Flower's own fixed 3-s wait between pulls).",
    ),
) -> None:
    from fedcustomer.deploy.flower import flower_env
    from fedcustomer.deploy.node import (
        DEFAULT_CLIENTAPP,
        SECRET_FILE,
        WARM,
        check_clientapp,
        default_auth_key,
        node_exit_message,
        run_warm_node,
        supernode_command,
        write_runtime_secret,
    )
    from fedcustomer.partner.home import PartnerHome

    ph = PartnerHome(home.resolve())
    if not ph.config_path.exists():
        raise ConfigError(
            f"{home} is not a partner home; run `fedcustomer node prepare` or `fedcustomer init`"
        )
    if ph.config().name != partner:
        raise ConfigError(f"--partner {partner!r} does not match the home's partner {ph.config().name!r}")
    if insecure:
        warn_insecure(err)
    key = auth_key if auth_key is not None else default_auth_key(ph.root)
    if not insecure and not key.exists():
        raise KeyMaterialError(f"{key} not found; create it with `fedcustomer node keys --home {home}`")
    mode = check_clientapp(clientapp or DEFAULT_CLIENTAPP)
    cmd = supernode_command(
        ph.root,
        superlink=superlink,
        root_cert=root_cert,
        auth_key=key if key.exists() else None,
        runtime_port=runtime_port,
        insecure=insecure,
        clientapp=mode,
        secret_file=ph.state_dir / SECRET_FILE,
        poll=poll,
    )
    env = flower_env(ph.state_dir / "flwr-home")
    if mode != WARM:
        foreground(cmd, env, cwd=ph.state_dir)
        return
    code = run_warm_node(cmd, runtime_port, write_runtime_secret(ph.root), env, ph.state_dir)
    if code not in (0, 128 + signal.SIGTERM, 128 + signal.SIGINT, 130):
        raise FederationError(node_exit_message(code, ph.root, superlink, root_cert))
