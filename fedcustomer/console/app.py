"""The console's web application (Starlette) and the server that runs it (uvicorn).

``create_app`` wires the pages of each role, the console's own static files (one
stylesheet, one small polling script: nothing from a CDN), security headers on every
response, and product errors as pages: not signed in -> the sign-in page, a view the
policy refuses -> 403, bad input -> 400, a damaged log or registry -> 409. No traceback
reaches the browser.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from fedcustomer.console import routes_admin, routes_compliance, routes_login, routes_runs
from fedcustomer.console.context import ConsoleContext, ConsoleSettings
from fedcustomer.console.pages import HERE, SECURITY_HEADERS, Forbidden, redirect, render, session_of
from fedcustomer.errors import (
    AccessDenied,
    BudgetExhausted,
    ConfigError,
    FedCustomerError,
    IntegrityError,
    KeyMaterialError,
)

DEFAULT_HOST = "127.0.0.1"


class _Headers(BaseHTTPMiddleware):
    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def _person(request: Request) -> object:
    session = session_of(request)
    if session is None or session.person is None:
        return None
    try:
        return request.app.state.console.current(session.person["key_id"])
    except FedCustomerError:
        return None


async def _product_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, AccessDenied) and not isinstance(exc, Forbidden) and _person(request) is None:
        if request.method == "GET":
            return redirect("/login")
        return render(request, "error.html", 401, message=str(exc))
    status = 403 if isinstance(exc, (Forbidden, AccessDenied, BudgetExhausted)) else 400
    if isinstance(exc, IntegrityError):
        status = 409
    if isinstance(exc, ConfigError) and str(exc).startswith("no such"):
        status = 404
    return render(request, "error.html", status, message=str(exc), person=_person(request))


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    return render(request, "error.html", status, message="not found" if status == 404 else "request refused")


def _warm_index(context: ConsoleContext) -> None:
    """Catch the audit index up with the log at start-up (a damaged log is reported by the pages)."""
    try:
        context.index.update()
    except FedCustomerError:
        pass


def create_app(settings: ConsoleSettings) -> Starlette:
    """The console for one partner home (and optionally one runs folder)."""
    context = ConsoleContext(settings)
    routes = [
        *routes_login.ROUTES,
        *routes_compliance.ROUTES,
        *routes_admin.ROUTES,
        *routes_runs.ROUTES,
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        threading.Thread(target=_warm_index, args=(context,), daemon=True, name="audit-index").start()
        yield

    app = Starlette(
        routes=routes,
        middleware=[Middleware(_Headers)],
        exception_handlers={FedCustomerError: _product_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.console = context
    return app


def serve(
    settings: ConsoleSettings,
    *,
    host: str = DEFAULT_HOST,
    port: int = 8400,
    cert: Path | None = None,
    key: Path | None = None,
) -> None:
    """Run the console until interrupted (TLS when a certificate and key are given)."""
    import uvicorn

    if (cert is None) != (key is None):
        raise ConfigError("give both --cert and --key for TLS (see `fedcustomer certs`), or neither")
    for path in (cert, key):
        if path is not None and not Path(path).is_file():
            raise KeyMaterialError(f"{path}: TLS certificate or key file not found")
    settings.tls = cert is not None
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=None if cert is None else str(cert),
        ssl_keyfile=None if key is None else str(key),
        log_level="warning",
        server_header=False,
    )
