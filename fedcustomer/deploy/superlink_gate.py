"""Flower's SuperLink without the middleware layers that only pass a request on (``coordinator start``).

Why: Flower 1.42's SuperLink serves every Fleet, Runtime and Control request through eight
Starlette ``BaseHTTPMiddleware`` layers (``flwr.superlink.main._get_middleware``). Each layer costs
a task group, memory streams and a wrapped response per request, whether or not it does anything
for that path: in a profiled two-party vertical job the framework's dispatch was about a third of
the SuperLink's CPU, and the SuperLink was the busiest process of the job. Five of the layers act
only on Control API paths (``/v1/control/``) or, for the Fleet event log, only when an event-log
plugin is loaded; for every other request their ``dispatch`` is exactly ``return await
call_next(request)``.

This entry point runs Flower's own ``flower-superlink`` main unchanged, except that those layers
are wrapped in a :class:`PathGate`: a request the layer would only pass on goes straight to the
next layer; any other request (every Control API request, a Fleet request when an event-log plugin
is loaded) goes through Flower's layer as before. The node-authentication layer, the protobuf
translation and the error translator stay on every request they act on; TLS, the signature and
timestamp checks, the database and what is stored are Flower's own. Only the Flower versions this
was checked against get the gate (the gated layers' source is pinned by a test); on another
version Flower runs unchanged and the SuperLink's log says so once.

It also keeps the SuperLink's node-key lookups between node registrations
(:mod:`fedcustomer.deploy.node_key_cache`), and freezes the objects made while importing (``gc.freeze``) once Flower's app is built, so
the collector's full passes during a job do not walk the hundreds of thousands of module-level
objects that live as long as the process.

Given the reply bell's write end by the coordinator's supervisor, it also rings the coordinator's
grid when a node's reply is stored (:mod:`fedcustomer.deploy.reply_bell`), and holds a node's empty
pull until a message for it may have been stored (:mod:`fedcustomer.deploy.pull_hold`).

    python -m fedcustomer.deploy.superlink_gate -- /path/to/flower-superlink --host H --port P ...
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, cast

from fedcustomer.apps.flower_waits import TESTED_FLOWER, flower_version, tested
from fedcustomer.common.pipe_bell import open_pipe_fd
from fedcustomer.deploy import node_key_cache, pull_hold, reply_bell

MAIN_MODULE = "flwr.superlink.main"
CONTROL_PREFIX = "/v1/control/"
FLEET_PREFIX = "/v1/fleet/"
FLEET_EVENT_LOG_STATE = "fleet_event_log_plugin"  # the app-state attribute FleetEventLogMiddleware reads

Scope = dict[str, Any]
Applies = Callable[[Scope, str], bool]


def _control_only(scope: Scope, path: str) -> bool:
    return path.startswith(CONTROL_PREFIX)


def _fleet_only(scope: Scope, path: str) -> bool:
    return path.startswith(FLEET_PREFIX)


def _fleet_with_event_log(scope: Scope, path: str) -> bool:
    if not path.startswith(FLEET_PREFIX):
        return False
    app = scope.get("app")
    return getattr(getattr(app, "state", None), FLEET_EVENT_LOG_STATE, None) is not None


# Flower's layer (module, class) -> when its dispatch does more than pass the request on.
GATED: dict[tuple[str, str], Applies] = {
    ("flwr.superlink.routers.control.middlewares", "ControlSensitiveResponseMiddleware"): _control_only,
    ("flwr.superlink.routers.control.middlewares", "ControlAuthenticationMiddleware"): _control_only,
    ("flwr.superlink.routers.control.middlewares", "ControlLicenseMiddleware"): _control_only,
    ("flwr.superlink.routers.control.middlewares", "ControlEventLogMiddleware"): _control_only,
    ("flwr.superlink.routers.fleet.node_auth", "NodeAuthMiddleware"): _fleet_only,
    ("flwr.superlink.routers.fleet.middlewares", "FleetEventLogMiddleware"): _fleet_with_event_log,
}


def request_path(scope: Scope) -> str:
    """The path a layer's ``dispatch`` sees (``request.url.path``), from the ASGI scope."""
    from starlette.requests import HTTPConnection

    return str(HTTPConnection(scope).url.path)


class PathGate:
    """An ASGI layer in front of one of Flower's: requests that layer only passes on skip it."""

    def __init__(self, app: Any, *, inner: type, applies: Applies, **kwargs: Any) -> None:
        self.app = app
        self.inner = inner(app, **kwargs)
        self.applies = applies

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and not self.applies(scope, request_path(scope)):
            await self.app(scope, receive, send)
        else:
            await self.inner(scope, receive, send)


def gate_middleware(middleware: list[Any]) -> list[Any]:
    """Flower's middleware list with the pass-through layers gated (others, and their order, unchanged)."""
    from starlette.middleware import Middleware

    gated = []
    for item in middleware:
        cls = getattr(item, "cls", None)
        applies = GATED.get((getattr(cls, "__module__", ""), getattr(cls, "__name__", "")))
        if applies is None or item.args:
            gated.append(item)
        else:
            layer = cast(Any, PathGate)  # an ASGI class; Starlette's stubs want its exact signature
            gated.append(Middleware(layer, inner=cls, applies=applies, **item.kwargs))
    return gated


def _built_then_frozen(create_app: Callable[..., Any]) -> Callable[..., Any]:
    def create_and_freeze(*args: Any, **kwargs: Any) -> Any:
        app = create_app(*args, **kwargs)
        gc.collect()
        gc.freeze()  # what was imported lives as long as the process: full passes skip it
        return app

    return create_and_freeze


def install(version: str | None = None) -> bool:
    """Gate Flower's pass-through SuperLink layers; False (Flower unchanged) on an untested version."""
    if not tested(flower_version() if version is None else version):
        return False
    main = importlib.import_module(MAIN_MODULE)
    get_middleware = getattr(main, "_get_middleware", None)
    create_app = getattr(main, "create_app", None)
    if not callable(get_middleware) or not callable(create_app):
        return False  # not the SuperLink this was written for
    if getattr(get_middleware, "gated", False):
        return True
    original = get_middleware

    def gated_middleware() -> list[Any]:
        return gate_middleware(list(original()))

    gated_middleware.gated = True  # type: ignore[attr-defined]
    main._get_middleware = gated_middleware  # type: ignore[attr-defined]
    main.create_app = _built_then_frozen(create_app)  # type: ignore[attr-defined]
    return True


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args or args.index("--") + 1 >= len(args):
        print(
            "usage: python -m fedcustomer.deploy.superlink_gate -- FLOWER-SUPERLINK [ARGS ...]",
            file=sys.stderr,
        )
        return 2
    command = args[args.index("--") + 1 :]
    version = flower_version()
    node_key_cache.install(version=version)  # on an untested version it leaves Flower as it is, too
    # rings the coordinator's grid when a reply is stored (no pipe, untested Flower: no bell)
    reply_bell.install(open_pipe_fd(os.environ.get(reply_bell.ENV_FD)), version=version)
    pull_hold.install(version=version)  # a node's empty pull waits here for its next message
    if not install(version=version):
        print(
            f"fedcustomer coordinator: the SuperLink's pass-through layers are not gated: Flower "
            f"{version or '(unknown version)'} is not one this was checked with "
            f"({', '.join(v + 'x' for v in TESTED_FLOWER)}); Flower's own stack applies",
            file=sys.stderr,
            flush=True,
        )
    from flwr.superlink.cli.flower_superlink import flower_superlink

    sys.argv = command
    flower_superlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
