"""The Flower app a job's bundle names, imported from the installed fedcustomer only.

Why one function: both warm executors (ClientApp beside a SuperNode, ServerApp beside a SuperLink) take
the app's name from the job's bundle but never install or import code the bundle carries; the same
check (a ``fedcustomer.apps`` module, an attribute path, the right Flower type) guards both.
"""

from __future__ import annotations

import importlib
from typing import Any

ALLOWED_APP_PREFIX = "fedcustomer.apps."


def load_installed_app(
    fab_content: bytes, *, kind: str, app_type: type, error: type[Exception], host: str
) -> Any:
    """The ``kind`` ("ServerApp"/"ClientApp") the bundle names; ``error`` (Flower's own) says why not.

    ``host`` names who refuses a foreign app ("this coordinator", "this node").
    """
    from flwr.common.config import get_fab_config

    try:
        ref = str(get_fab_config(fab_content)["tool"]["flwr"]["app"]["components"][kind.lower()])
    except Exception as exc:  # a bundle without the component: the job's error, reported as Flower would
        raise error(f"the job's app bundle names no valid {kind} ({type(exc).__name__})") from None
    module_name, _, attrs = ref.partition(":")
    if not module_name.startswith(ALLOWED_APP_PREFIX) or not attrs:
        raise error(f"{kind} {ref!r} refused: {host} runs only the {kind}s installed with fedcustomer")
    obj: Any = importlib.import_module(module_name)
    try:
        for attr in attrs.split("."):
            obj = getattr(obj, attr)
    except AttributeError:
        raise error(f"{kind} {ref!r} not found in the installed fedcustomer") from None
    if not isinstance(obj, app_type):
        raise error(f"{ref!r} is not a Flower {kind}")
    return obj
