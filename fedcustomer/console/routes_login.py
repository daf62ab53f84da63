"""Signing in and out: password + TOTP, a signed challenge, or an OIDC ID token.

Each way ends in a *new* session whose person is the registered key's; the role always
comes from the people registry. Password and TOTP failures count towards the lock-out
of the login name (:mod:`.credentials`); every sign-in, and every refused password or
code, is an audit entry.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fedcustomer.console import actions
from fedcustomer.console.pages import (
    anonymous,
    console,
    form_checked,
    redirect,
    render,
    session_of,
    set_cookie,
)
from fedcustomer.console.sessions import Session
from fedcustomer.errors import AccessDenied
from fedcustomer.privacy.access.approvals import identity_key
from fedcustomer.privacy.access.people import PersonKey

GENERIC_FAILURE = "name, password or code not accepted"


def _finish(request: Request, session: Session, person: PersonKey, method: str) -> Response:
    fresh = console(request).sessions.sign_in(
        session, {"key_id": person.key_id, "name": person.name, "role": person.role, "method": method}
    )
    return set_cookie(request, redirect("/"), fresh)


async def home(request: Request) -> Response:
    session = session_of(request)
    if session is None or session.person is None:
        return redirect("/login")
    try:
        person = console(request).current(session.person["key_id"])
    except AccessDenied:
        return redirect("/login")
    views = console(request).views_for(person)
    return redirect(views[0][2]) if views else render(request, "empty.html", person=person)


async def login_page(request: Request) -> Response:
    session = anonymous(request)
    return render(request, "login.html", session=session, oidc=console(request).oidc is not None)


async def login_password(request: Request) -> Response:
    ctx = console(request)
    session = anonymous(request)
    form = await form_checked(request, session)
    name = form.get("name", "").strip()[:128]
    person = ctx.person_by_name(name) if name else None
    key_id = person.key_id if person is not None else None
    # one counter per person, whichever look-alike spelling of their name is typed
    login = f"key:{key_id}" if key_id else f"name:{identity_key(name) if name else ''}"
    try:
        ctx.credentials.check_not_locked(login)
    except AccessDenied as exc:
        return render(request, "login.html", 429, session=session, error=str(exc), oidc=ctx.oidc is not None)
    if not ctx.credentials.check_password(key_id, form.get("password", "")):
        ctx.credentials.record_failure(login)
        actions.record_login(ctx.home, person, "password", ok=False, claimed=name)
        return render(
            request, "login.html", 401, session=session, error=GENERIC_FAILURE, oidc=ctx.oidc is not None
        )
    ctx.sessions.put_pending(session, "password_ok", {"key_id": key_id, "login": login})
    return render(request, "login_totp.html", session=session)


async def login_totp(request: Request) -> Response:
    ctx = console(request)
    session = anonymous(request)
    form = await form_checked(request, session)
    pending = ctx.sessions.pending_fresh(session, "password_ok")
    if pending is None:
        return redirect("/login")
    try:
        ctx.credentials.check_not_locked(pending["login"])
        person = ctx.current(pending["key_id"])
    except AccessDenied as exc:
        return render(request, "login.html", 429, session=session, error=str(exc), oidc=ctx.oidc is not None)
    if not ctx.credentials.check_totp(person.key_id, form.get("code", "")):
        ctx.credentials.record_failure(pending["login"])
        actions.record_login(ctx.home, person, "password+totp", ok=False)
        ctx.sessions.put_pending(session, "password_ok", pending)
        return render(request, "login_totp.html", 401, session=session, error=GENERIC_FAILURE)
    ctx.credentials.clear_failures(pending["login"])
    actions.record_login(ctx.home, person, "password+totp", ok=True)
    return _finish(request, session, person, "password+totp")


async def key_page(request: Request) -> Response:
    ctx = console(request)
    session = anonymous(request)
    challenge = secrets.token_hex(16)
    ctx.sessions.put_pending(session, "challenge", challenge)
    intent = actions.login_intent(ctx.partner, challenge)
    return render(request, "login_key.html", session=session, intent=intent)


async def key_login(request: Request) -> Response:
    ctx = console(request)
    session = anonymous(request)
    form = await form_checked(request, session)
    challenge = ctx.sessions.pending_fresh(session, "challenge")
    if challenge is None:
        return redirect("/login/key")
    try:
        actor = actions.key_login(ctx.home, form.get("token", ""), challenge)
        person = ctx.current(getattr(actor, "key_id", ""))
    except AccessDenied as exc:
        return render(request, "login.html", 401, session=session, error=str(exc), oidc=ctx.oidc is not None)
    return _finish(request, session, person, "identity_key")


async def oidc_login(request: Request) -> Response:
    ctx = console(request)
    session = anonymous(request)
    form = await request.form()
    values = {k: str(v) for k, v in form.items() if isinstance(v, str)}
    if not secrets.compare_digest(session.csrf, values.get("csrf") or values.get("state") or "-"):
        return render(
            request, "login.html", 403, session=session, error="the form's CSRF token is missing or wrong"
        )
    if ctx.oidc is None:
        return render(
            request, "login.html", 404, session=session, error="OIDC is not configured here", oidc=False
        )
    try:
        name = ctx.oidc.person_name(values.get("id_token", ""))
    except AccessDenied as exc:
        actions.record_login(ctx.home, None, "oidc", ok=False)
        return render(request, "login.html", 401, session=session, error=str(exc), oidc=True)
    person = ctx.person_by_name(name)
    if person is None:
        actions.record_login(ctx.home, None, "oidc", ok=False, claimed=name)
        return render(
            request, "login.html", 401, session=session, error="no active person by that name", oidc=True
        )
    actions.record_login(ctx.home, person, "oidc", ok=True)
    return _finish(request, session, person, "oidc")


async def logout(request: Request) -> Response:
    session = session_of(request)
    if session is not None:
        await form_checked(request, session)
        console(request).sessions.drop(session.sid)
    return redirect("/login")


ROUTES = [
    Route("/", home),
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login_password, methods=["POST"]),
    Route("/login/totp", login_totp, methods=["POST"]),
    Route("/login/key", key_page, methods=["GET"]),
    Route("/login/key", key_login, methods=["POST"]),
    Route("/login/oidc", oidc_login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
