"""The coordinator's ServerApp for two-party jobs (PSI, vertical training) on the Deployment Engine.

Composition only: the job is in the run config (``mode`` psi or vertical) and
:func:`fedcustomer.vertical.deployed.run_two_party` runs it; the partners' ClientApp is
the ordinary one (:mod:`fedcustomer.apps.client`), which answers PSI and vertical messages.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcustomer.apps.prompt_grid import PromptGrid, reply_bell
from fedcustomer.vertical.deployed import run_two_party


def make_two_party_server_app(errors: list[BaseException] | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            # replies seen promptly; each message's records as one object (fewer requests per exchange)
            # a coordinator's SuperLink that rings says when a reply is there (see deploy.reply_bell)
            grid = PromptGrid(grid, pack=True, bell=reply_bell())
            run_two_party(grid, dict(context.run_config))
        except BaseException as exc:  # surfaced by the caller; Flower would only log it
            if errors is not None:
                errors.append(exc)
            raise

    return app


# `flwr run` entry point of a two-party job (written into the coordinator's app directory).
app = make_two_party_server_app()
