"""What every console page shares: templates, the session cookie, CSRF and the view guard.

Templates are Jinja2 with autoescaping on for every file: anything that came from a
file, the audit log or a person (field names, dataset names, reasons) is escaped when
rendered. Responses carry a strict Content-Security-Policy (only this server's own
scripts and styles; no inline script), and are never cached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fedcustomer.console.context import VIEWS, ConsoleContext
from fedcustomer.console.sessions import COOKIE, IDLE_SECONDS, SECURE_COOKIE, Session, csrf_ok
from fedcustomer.errors import AccessDenied, FedCustomerError
from fedcustomer.privacy.access.people import PersonKey

HERE = Path(__file__).parent
ENV = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Forbidden(FedCustomerError):
    """A signed-in person asked for a view the policy does not give their role (HTTP 403)."""


def console(request: Request) -> ConsoleContext:
    ctx: ConsoleContext = request.app.state.console
    return ctx


def cookie_name(request: Request) -> str:
    return SECURE_COOKIE if console(request).settings.tls else COOKIE


def session_of(request: Request) -> Session | None:
    return console(request).sessions.get(request.cookies.get(cookie_name(request)))


def set_cookie(request: Request, response: Response, session: Session) -> Response:
    response.set_cookie(
        cookie_name(request),
        session.sid,
        max_age=int(IDLE_SECONDS) * 4,
        path="/",
        secure=console(request).settings.tls,
        httponly=True,
        samesite="strict",
    )
    return response


def anonymous(request: Request) -> Session:
    """The visitor's session (a new anonymous one if none), for the sign-in forms' CSRF token."""
    return session_of(request) or console(request).sessions.new()


def render(
    request: Request, template: str, status: int = 200, session: Session | None = None, **ctx: Any
) -> Response:
    session = session or session_of(request)
    person: PersonKey | None = ctx.pop("person", None)
    nav = console(request).views_for(person) if person is not None else []
    html = ENV.get_template(template).render(
        partner=console(request).partner,
        person=person,
        nav=nav,
        csrf=session.csrf if session else "",
        **ctx,
    )
    response = HTMLResponse(html, status_code=status)
    if session is not None:
        set_cookie(request, response, session)
    return response


def signed_in(request: Request) -> tuple[Session, PersonKey]:
    """The session and registered person, or AccessDenied (the caller redirects to sign-in)."""
    session = session_of(request)
    if session is None or session.person is None:
        raise AccessDenied("sign in first")
    try:
        person = console(request).current(session.person["key_id"])
    except AccessDenied:
        console(request).sessions.drop(session.sid)
        raise
    return session, person


def guard(request: Request, view: str) -> tuple[Session, PersonKey]:
    """Signed in, and the policy gives the person's role this view's action."""
    session, person = signed_in(request)
    if not console(request).may(person, view):
        raise Forbidden(
            f"your role '{person.role}' may not see {VIEWS[view][1].lower()} (the access policy decides)"
        )
    return session, person


async def form_checked(request: Request, session: Session) -> dict[str, str]:
    """The posted form, refused unless it carries the session's CSRF token."""
    form = await request.form()
    values = {k: str(v) for k, v in form.items() if isinstance(v, str)}
    if not csrf_ok(session, values.get("csrf") or request.headers.get("x-csrf-token")):
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page and try again")
    return values


def redirect(path: str) -> Response:
    return RedirectResponse(path, status_code=303)
