"""The coordinator's Flower ServerApp: reads the job (simulation or deployment) and runs its rounds.

Composition only: the job comes from the caller or the run config, partners from
:mod:`fedcustomer.server.partners` (simulation) or :mod:`fedcustomer.server.deployment`.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcustomer.apps.prompt_grid import PromptGrid, reply_bell
from fedcustomer.apps.simulation_grid import paced
from fedcustomer.data.features import FeatureSpec
from fedcustomer.server.deployment import deployment_setup, wait_for_partners
from fedcustomer.server.job import JobConfig
from fedcustomer.server.partners import prepare_partners
from fedcustomer.server.run import RoundCallback, run_job_on_grid


def make_server_app(
    job: JobConfig | None = None,
    spec: FeatureSpec | None = None,
    *,
    num_partners: int | None = None,
    on_round: RoundCallback | None = None,
    resume: bool = False,
    errors: list[BaseException] | None = None,
    notices: list[str] | None = None,
) -> ServerApp:
    """Build the ServerApp; without ``job`` it reads the job from the run config (``flwr run``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            the_job, the_spec, n, the_resume = job, spec, num_partners, resume
            raw = {k: v for k, v in dict(context.run_config).items()}
            deployed = the_job is None and bool(raw.get("deployment"))
            if deployed:
                # Deployment: partners are real nodes with their own homes; the coordinator
                # has no data, so the feature spec comes from the run config. It waits for them.
                the_job, the_spec, n, the_resume = deployment_setup(grid, raw)
                grid = PromptGrid(grid, bell=reply_bell())  # replies seen promptly, not on 3-s polls
            if the_job is None:
                the_job = JobConfig.from_dict(raw)
            the_notices = list(notices or [])
            if the_spec is None or n is None:
                the_spec, homes = prepare_partners(the_job, the_notices)
                n = len(homes)
            if not deployed:
                grid = paced(grid)  # the simulation engine's replies pulled within ~0.01 s, not 0.1 s
                # Simulated nodes register while the ServerApp starts; on a busy machine that
                # takes a while. Wait for them (progress, not a fixed time) before round 1.
                wait_for_partners(grid, n, the_job.min_partners, the_job.round_timeout)
            run_job_on_grid(
                grid,
                the_job,
                the_spec,
                num_partners=n,
                on_round=on_round,
                resume=the_resume,
                notices=the_notices,
            )
        except BaseException as exc:  # surfaced by the caller; Flower would only log it
            if errors is not None:
                errors.append(exc)
            raise

    return app


# `flwr run .` entry point (see [tool.flwr.app.components] in pyproject.toml).
app = make_server_app()
