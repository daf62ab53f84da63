"""`fedcustomer budget secagg-trust`: a partner accepts (or withdraws) the SecAgg+ trust assumption.

Accepting it lets the ledger charge a distributed-DP round with the guarantee against the
coordinator (the full noise of the secure sum) instead of the weaker one against anyone who could
see this partner's own update (docs/PRIVACY.md). That changes what the partner's budget pays for, so
it is a governance action like ``budget set``: signed with the acting person's identity key, their
registered role must be allowed ``policy_edit`` (a partner admin), and the audit log records who
decided what, when and why; if that entry cannot be written, ``partner.toml`` is put back. A refusal
changes nothing.

Kept apart from :mod:`fedcustomer.cli.analytics`; it adds one command to the same ``budget`` group.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from fedcustomer.cli.identity import IdentityOpt, governed_home, load_signer
from fedcustomer.cli.terminal import terminal
from fedcustomer.errors import ConfigError

console = terminal()
AUDIT_ACTION = "secagg_trust_set"


DECISIONS = {"accept": True, "withdraw": False}
MAX_REASON = 500  # characters: a reference to the review or agreement, not the document itself


def register(budget_app: typer.Typer) -> None:
    budget_app.command(
        "secagg-trust",
        help="Accept or withdraw the SecAgg+ trust assumption: distributed-DP rounds are then charged against "
        "the coordinator (full noise) or against a single update (its share). Signed with your identity key "
        "and audit-logged; needs a role allowed policy_edit (partner_admin).",
    )(secagg_trust)


def secagg_trust(
    decision: str = typer.Argument(
        ...,
        metavar="accept|withdraw",
        help="accept: SecAgg+ holds with its threshold and the coordinator colludes with no partner "
        "(docs/PRIVACY.md); withdraw: charge the guarantee against a single update again",
        show_default=False,
    ),
    home: Path = typer.Option(..., "--home", help="The partner's home (made with `fedcustomer init`)."),
    reason: str = typer.Option(
        ...,
        "--reason",
        help=f"why (e.g. the review or agreement it rests on), at most {MAX_REASON} characters",
    ),
    identity: Path = IdentityOpt,
) -> None:
    from fedcustomer.data.store import PartnerStore

    if decision not in DECISIONS:
        raise ConfigError(f"the decision must be accept or withdraw, got {decision!r}")
    trust = DECISIONS[decision]
    phome = governed_home(home)
    reason = reason.strip()
    if not reason:
        raise ConfigError("--reason must say why the assumption is accepted or withdrawn")
    if len(reason) > MAX_REASON:
        raise ConfigError(
            f"--reason is {len(reason)} characters; keep it under {MAX_REASON} (cite the review, do not paste it)"
        )
    signer = load_signer(identity)
    with phome.config_change() as config, PartnerStore.open(phome) as store:
        before = config.secagg_trust
        asked = {"trust": trust, "previous": before}
        who = store.principal(
            signer, action=AUDIT_ACTION, audit_action=AUDIT_ACTION, extra=asked | {"reason": reason}
        )
        store.require(who, "policy_edit", AUDIT_ACTION, details=asked)

        def record() -> None:
            store.log(who, AUDIT_ACTION, details=asked, reason=f"{decision}: {reason}")

        if before == trust:
            record()  # the decision again, on the record; the file stays as it is
        else:
            config.secagg_trust = trust
            phome.write_config_recorded(config, record)
    view = "against the coordinator (SecAgg+ trusted)" if trust else "against a single update"
    console.print(
        f"partner [bold]{escape(config.name)}[/]: distributed-DP rounds are charged {view} from its next round"
        + ("" if before != trust else " (unchanged; the decision is recorded again)")
    )
