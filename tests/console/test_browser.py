"""The console in a real browser: headless Chromium (the system's, via Playwright) against a live server.

Signs in with password + TOTP and with a signed challenge, walks each role's views,
approves a request in the browser and finds the approval in the audit log (which still
verifies), searches and exports the audit trail, and watches a run's charts and live
progress. Screenshots of each main view go to ``$FEDCUSTOMER_ARTEFACTS`` (default: a
``fedcustomer-artefacts`` folder in the system's temporary directory, outside the
checkout). Skipped only when Chromium is not installed (``make setup`` installs it).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcustomer.console.intents import sign_intent
from fedcustomer.data.store import PartnerStore
from fedcustomer.privacy.audit.signatures import check_entry_signatures
from tests.cli.cli_runner import run
from tests.console.conftest import PASSWORDS, World

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make setup installs it)")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
WAIT_MS = 20_000


def artefacts() -> Path:
    path = Path(
        os.environ.get("FEDCUSTOMER_ARTEFACTS") or Path(tempfile.gettempdir()) / "fedcustomer-artefacts"
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[tuple[str, object]]:
    import uvicorn

    app = world.app()
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:  # wait on the server's own readiness flag
        assert thread.is_alive() and time.monotonic() < deadline, "the console did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(artefacts() / f"{name}.png"), full_page=True)


def sign_in(browser, base: str, world: World, app, name: str, *, screenshots: bool = False):
    context = browser.new_context(base_url=base, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto("/login")
    page.fill("#name", name)
    page.fill("#password", PASSWORDS[name])
    if screenshots:
        shot(page, "01-sign-in")
    page.click("#sign-in")
    page.wait_for_selector("#code")
    if screenshots:
        shot(page, "02-second-factor")
    page.fill("#code", world.code(app.state.console, name))
    page.click("#verify")
    page.wait_for_selector("#who")
    return page


def test_compliance_officer_searches_exports_verifies_and_recomputes(browser, server, world: World) -> None:
    base, app = server
    page = sign_in(browser, base, world, app, "carol", screenshots=True)
    assert "carol (compliance_officer)" in page.inner_text("#who")
    assert page.url.endswith("/audit")
    page.fill("#f-action", "ingest")
    page.click("#search")
    page.wait_for_url("**/audit?*action=ingest*")
    rows = page.locator("#entries tbody tr")
    assert rows.count() >= 1 and all("ingest" in rows.nth(i).inner_text() for i in range(rows.count()))
    shot(page, "03-audit-search")
    with page.expect_download() as download:
        page.click("#export-csv")
    text = Path(download.value.path()).read_text(encoding="utf-8")
    exported = list(csv.DictReader(io.StringIO(text)))
    assert exported and all(r["action"] == "ingest" for r in exported)
    page.click("#nav-verify")
    page.wait_for_selector("#verdict")
    assert page.inner_text("#verdict").startswith("INTACT") and "verify" in page.inner_text("#signatures")
    shot(page, "04-verification")
    page.click("#nav-budgets")
    page.click("#recompute")
    page.wait_for_selector("#recompute-result")
    assert "5 of 5 running totals match" in page.inner_text("#recompute-result")
    shot(page, "05-budgets")
    assert page.locator("#nav-people").count() == 0 and page.locator("#nav-runs").count() == 0
    page.context.close()


def test_partner_admin_approves_in_the_browser_and_the_audit_log_shows_it(
    browser, server, world: World, capsys
) -> None:
    base, app = server
    page = sign_in(browser, base, world, app, "alice")
    page.click("#nav-approvals")
    page.wait_for_selector("#pending")
    assert world.request_id in page.inner_text("#pending")
    shot(page, "06-approvals")
    page.click(f'a.approve[href="/approvals/{world.request_id}/approve"]')
    intent = page.inner_text("#intent")
    page.fill("#token", sign_intent(world.people["alice"].signer, intent))  # what `console sign` prints
    shot(page, "07-sign-approval")
    page.click("#submit-signed")
    page.wait_for_selector("#message")
    assert "approval recorded" in page.inner_text("#message")
    page.click("#nav-people")
    page.wait_for_selector("#people")
    assert "rick" in page.inner_text("#people")
    shot(page, "08-people")
    page.click("#nav-ingests")
    page.wait_for_selector("#ingests")
    assert page.inner_text("#ingests .quarantined") == "1"
    shot(page, "09-ingests")
    page.context.close()

    officer = sign_in(browser, base, world, app, "carol")
    officer.fill("#f-action", "approve")
    officer.fill("#f-actor", "alice")
    officer.click("#search")
    officer.wait_for_url("**/audit?*action=approve*")
    first = officer.locator("#entries tbody tr").first.inner_text()
    assert "alice" in first and "allowed" in first and world.request_id in first
    officer.context.close()
    with PartnerStore.open(world.home) as store:
        assert store.audit.verify().ok
        assert check_entry_signatures(iter(store.audit), store.people).ok
    code, out, _ = run(["audit", "verify", "--home", str(world.home.root)], capsys)
    assert code == 0 and "INTACT" in out and "SIGNATURES" in out


def test_data_scientist_signs_in_with_a_key_and_watches_runs(browser, server, world: World) -> None:
    base, _ = server
    context = browser.new_context(base_url=base)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto("/login")
    page.click("#key-login")
    page.fill("#token", sign_intent(world.people["dana"].signer, page.inner_text("#intent")))
    page.click("#key-sign-in")
    page.wait_for_selector("#runs")
    assert "dana (data_scientist)" in page.inner_text("#who")
    shot(page, "10-runs")
    page.click('a[href="/runs/run-a"]')
    page.wait_for_selector("svg.chart")
    assert page.locator("svg.chart").count() == 4
    assert page.locator('polyline[data-series="retail_b"]').count() == 1
    assert "budget:" in page.inner_text("#refusals")
    shot(page, "11-run-charts")
    page.goto("/runs")
    page.check('input[value="run-a"]')
    page.check('input[value="run-b"]')
    page.click("#compare")
    page.wait_for_selector("#comparison")
    shot(page, "12-compare")
    page.goto("/runs/run-live")
    page.wait_for_selector('#run-status[data-rounds="8"]')
    with open(world.runs / "run-live" / "metrics.csv", "a") as f:
        f.write("9,1,1,0,0,0.5,0.7,0.6,0.9\n")
    page.wait_for_selector('#run-status[data-rounds="9"]')  # the page polled and reloaded by itself
    shot(page, "13-live-run")
    context.close()
