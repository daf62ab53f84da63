"""What the deployed ServerApp needs from its run config: job, feature spec, partner count, resume.

The coordinator has no partner data, so the feature spec is a built-in name or a JSON file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fedcustomer.data.features import FeatureSpec
from fedcustomer.errors import ConfigError, FederationError
from fedcustomer.server.job import JobConfig

# Run-config keys the deployed ServerApp reads besides the JobConfig fields.
DEPLOY_KEYS = (
    "deployment",
    "feature-spec",
    "resume",
    "wait-for-partners",
    "secagg",
    "secagg-clip-range",
    "secagg-quantization-range",
    "secagg-num-shares",
    "secagg-reconstruction-threshold",
)


# --- inside the deployed ServerApp ----------------------------------------------------
BUILTIN_SPECS = ("synthetic:repayment", "synthetic:clv", "uci-credit", "uci-credit-dp", "cdnow")


def resolve_spec(ref: str) -> FeatureSpec:
    """A feature spec by built-in name or JSON path: the coordinator never reads partner data to infer one."""
    if ref == "synthetic:repayment":
        from fedcustomer.data.synthetic import REPAYMENT_SPEC

        return REPAYMENT_SPEC
    if ref == "synthetic:clv":
        from fedcustomer.data.synthetic import CLV_SPEC

        return CLV_SPEC
    if ref == "uci-credit":
        from fedcustomer.data.uci_credit import UCI_SPEC

        return UCI_SPEC
    if ref == "uci-credit-dp":
        from fedcustomer.data.uci_credit import UCI_SPEC_DP

        return UCI_SPEC_DP
    if ref == "cdnow":
        from fedcustomer.data.cdnow import CDNOW_SPEC

        return CDNOW_SPEC
    path = Path(ref)
    if not path.is_file():
        raise ConfigError(
            f"feature-spec {ref!r} is neither a built-in ({', '.join(BUILTIN_SPECS)}) nor a JSON file"
        )
    try:
        spec = FeatureSpec.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{path}: not a feature spec JSON ({exc}); write one with FeatureSpec.to_dict()"
        ) from None
    return _labelled(spec, path)


def load_declared_spec(ref: str) -> FeatureSpec:
    """``--feature-spec``: a built-in encoding by name (e.g. ``uci-credit-dp``), else a JSON file."""
    return resolve_spec(ref) if ref in BUILTIN_SPECS else _labelled(FeatureSpec.load(ref), Path(ref))


def _labelled(spec: FeatureSpec, path: Path) -> FeatureSpec:
    """A horizontal job trains on a label at every partner: a features-only spec is refused."""
    if spec.label is None:
        raise ConfigError(
            f"{path} is a features-only spec (no label); a horizontal job needs one drafted with --label COLUMN"
        )
    return spec


def default_spec_ref(job: JobConfig) -> str:
    return f"synthetic:{job.task}" if job.data == "synthetic" else job.data


def split_run_config(raw: dict[str, Any]) -> tuple[JobConfig, dict[str, Any]]:
    """Separate the deployment keys from the JobConfig fields of a run config."""
    raw = dict(raw)
    extra = {k: raw.pop(k) for k in DEPLOY_KEYS if k in raw}
    return JobConfig.from_dict(raw), extra


def wait_for_partners(grid: Any, wanted: int, minimum: int, timeout: float, poll: float = 0.5) -> int:
    """Wait until ``wanted`` partner nodes are online (or ``minimum`` once ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    while True:
        n = len(list(grid.get_node_ids()))
        if n >= wanted or (time.monotonic() >= deadline and n >= minimum):
            return n
        if time.monotonic() >= deadline:
            raise FederationError(
                f"only {n} partner node(s) connected after {timeout:g} s; the job needs at least {minimum}. "
                "Check the nodes' logs and that their keys are registered (`flwr supernode ls`)"
            )
        time.sleep(poll)


def deployment_setup(grid: Any, raw: dict[str, Any]) -> tuple[JobConfig, FeatureSpec, int, bool]:
    """What the deployed ServerApp needs: job, spec (from the run config, no data), partner count, resume."""
    job, extra = split_run_config(raw)
    spec = resolve_spec(str(extra.get("feature-spec") or default_spec_ref(job)))
    wait_for_partners(grid, job.partners, job.min_partners, float(extra.get("wait-for-partners", 120.0)))
    return job, spec, job.partners, bool(extra.get("resume", False))
