"""Flower's retries for a message's objects that have not arrived yet, made prompt in our processes.

Why: on the Deployment Engine a sender pushes a message, then its objects (its records), and a
receiver can see the message in between. Flower 1.42 then asks again for each missing object after
1 s, doubling up to 10 s (``PULL_INITIAL_BACKOFF``, ``pull_objects`` in
``flwr/supercore/inflatable/inflatable_utils.py``): a reply that arrives a few milliseconds late
costs a second or more. It happens at every hop of an exchange: the coordinator's grid pulling a
reply from the SuperLink, the SuperNode pulling a message from it, the ClientApp pulling its task's
message from the SuperNode. :func:`prompt_retries` binds shorter pauses (10 ms, doubling to 0.25 s)
into the module that calls Flower's pull, for the Flower versions this was tested with only; the
total patience stays Flower's own (its overall time limit, not a count of tries, ends a pull).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

TESTED_FLOWER = ("1.42.",)  # version prefixes whose waits this package's substitutions were checked against
RETRY_FIRST_S = 0.01
RETRY_CAP_S = 0.25


def flower_version() -> str:
    import flwr

    return str(getattr(flwr, "__version__", ""))


def tested(version: str) -> bool:
    return version.startswith(TESTED_FLOWER)


def replace_flower_function(
    module_name: str,
    name: str,
    replacement_for: Callable[[Callable[..., Any]], Callable[..., Any]],
    version: str | None = None,
) -> bool:
    """Put ``replacement_for(f)`` in place of Flower's function ``f`` at ``module_name.name``.

    Only for the Flower versions the replacements were checked against; False (the module
    unchanged) for any other version or where ``name`` is not a function there.
    """
    if not tested(flower_version() if version is None else version):
        return False
    module = importlib.import_module(module_name)
    current = getattr(module, name, None)
    if not callable(current):
        return False
    setattr(module, name, replacement_for(current))
    return True


def prompt_retries(module_name: str, name: str, version: str | None = None) -> bool:
    """Give ``module_name``'s Flower pull function ``name`` prompt retries; False (unchanged) if untested."""

    def prompt(pull: Callable[..., Any]) -> Callable[..., Any]:
        if isinstance(pull, functools.partial):
            return pull  # done already
        return functools.partial(
            pull, initial_backoff=RETRY_FIRST_S, backoff_cap=RETRY_CAP_S, max_tries_per_object=None
        )

    return replace_flower_function(module_name, name, prompt, version)
