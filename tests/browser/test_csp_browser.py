"""Every page under the Content Security Policy, in Chromium (SPEC section 8): each answer carries
the policy, and the browser reports no violation of it and no console error, on a plain load and
while the page's scripts work (replay, the live socket, the keys page, the admin's widgets).

OSS pages are served as OSS runs (`manage.py serve`, SQLite or PostgreSQL); cloud's as it is
deployed, as the service role under row-level security, with sessions made here. Nothing here
touches the database once the browser runs (see test_keys_browser.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus

import pytest
import requests
from django.test import Client
from playwright.sync_api import expect

from tests.browser.conftest import ARTIFACTS
from tests.conftest import manage_env, scope_server
from tests.kahn_site.policy import EXPECTED_POLICY, policy_directives
from tests.tenants.conftest import POSTGRES_ONLY, cloud_server_env
from tests.tenants.conftest import service_role as service_role  # the fixture, for this directory

PATIENCE_MS = 20_000

# Runs before the page's own scripts, in every document: keeps what the browser reports.
WATCH_VIOLATIONS = """
window.policyViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  const what = event.blockedURI || "inline";
  const where = `${event.sourceFile}:${event.lineNumber}`;
  window.policyViolations.push(`${event.effectiveDirective} refused ${what} at ${where}`);
});
"""


@pytest.fixture
def page(browser_page):
    """The browser's page, watching for violations of the policy in every document it loads."""
    browser_page.add_init_script(WATCH_VIOLATIONS)
    return browser_page


def violations(page) -> list[str]:
    # The browser reports a violation in a task of its own: let those already queued run first.
    return page.evaluate("() => new Promise((done) => setTimeout(() => done(window.policyViolations), 0))")


def visit(page, url: str, status: int = 200) -> None:
    """Loads `url` as a person would and checks it was served under the policy, with no violation."""
    before = len(page.console_errors)
    response = page.goto(url)
    assert response is not None and response.status == status, (url, response and response.status)
    assert policy_directives(response.headers["content-security-policy"]) == EXPECTED_POLICY, url
    assert violations(page) == [], url
    if status >= 400:
        # The browser may note the page's own error answer; nothing else may appear.
        noted = page.console_errors[before:]
        answer = f"status of {status} ({HTTPStatus(status).phrase})"
        assert noted in ([], [f"Failed to load resource: the server responded with a {answer}"]), noted
        del page.console_errors[before:]
    assert page.console_errors == [], (url, page.console_errors)


def check_still_clean(page, where: str) -> None:
    assert violations(page) == [], where
    assert page.console_errors == [], (where, page.console_errors)


# ---------------------------------------------------------------- the policy bites


@pytest.fixture
def oss_url(transactional_db, imported) -> Iterator[str]:
    with scope_server(manage_env(), "--no-follow") as url:
        yield url


@pytest.mark.database_agnostic
def test_an_inline_script_or_style_put_into_a_page_is_refused_and_reported(oss_url, page):
    """What the tests below count on: the policy holds, and a breach of it is seen."""
    visit(page, f"{oss_url}/")
    ran = page.evaluate(
        """() => {
          const script = document.createElement("script");
          script.textContent = "window.inlineRan = true";
          document.body.append(script);
          document.body.insertAdjacentHTML("beforeend", '<p id="styled" style="color: rgb(255, 0, 0)">x</p>');
          const handler = document.createElement("img");
          handler.setAttribute("onerror", "window.handlerRan = true");
          handler.src = "/static/missing.png";
          document.body.append(handler);
          return window.inlineRan === true;
        }"""
    )
    assert ran is False
    expect(page.locator("#styled")).not_to_have_css("color", "rgb(255, 0, 0)")
    # Reported as events, after the fact. Asked from here, not by wait_for_function, whose polling
    # compiles its expression in the page: an eval this policy refuses.
    deadline = time.monotonic() + PATIENCE_MS / 1000
    while page.evaluate("() => window.policyViolations.length") < 3:
        assert time.monotonic() < deadline, violations(page)
        page.wait_for_timeout(50)
    refused = violations(page)
    assert any(v.startswith("script-src-elem refused inline") for v in refused), refused
    assert any(v.startswith("style-src-attr refused inline") for v in refused), refused
    assert any(v.startswith("script-src-attr refused inline") for v in refused), refused
    assert page.evaluate("window.handlerRan") is None
    assert any("Content Security Policy" in error for error in page.console_errors), page.console_errors
    # The missing image's 404 reaches the console when its load fails, which can come last.
    if not any("404" in error for error in page.console_errors):
        page.wait_for_event("console", predicate=lambda message: "404" in message.text)
    page.console_errors.clear()


# ---------------------------------------------------------------- OSS: every page


@pytest.mark.database_agnostic
def test_every_oss_page_loads_under_the_policy(oss_url, page):
    runs = requests.get(f"{oss_url}/api/v1/runs/", timeout=10).json()["results"]
    assert len(runs) == 8

    visit(page, f"{oss_url}/")
    # The history follows /ws/live: the socket opens under connect-src 'self'.
    expect(page.locator("#live-status")).to_have_text("Live", timeout=PATIENCE_MS)
    visit(page, f"{oss_url}/?status=failed")
    check_still_clean(page, "history, filtered")

    for run in runs:
        visit(page, f"{oss_url}/runs/{run['run_id']}/")
        if page.locator("#scrubber").count() and int(page.locator("#at").get_attribute("max")) >= 2:
            # Replay redraws the DAG and the timeline in the browser: no inline style on the way.
            page.get_by_role("button", name="One event back").click()
            page.get_by_role("button", name="One event back").click()
            expect(page.locator("#at-label")).to_contain_text("After event")
        if page.locator("#live-status").count():
            expect(page.locator("#live-status")).to_have_text("Live", timeout=PATIENCE_MS)
        check_still_clean(page, run["run_id"])
    page.screenshot(path=str(ARTIFACTS / "csp-run.png"), full_page=True)

    visit(page, f"{oss_url}/nodes/")
    expect(page.locator("svg.rate").first).to_be_visible()
    node_paths = sorted({link.get_attribute("href") for link in page.locator("a.node-link").all()})
    assert len(node_paths) >= 10, node_paths
    page.screenshot(path=str(ARTIFACTS / "csp-nodes.png"), full_page=True)
    for path in node_paths:
        visit(page, f"{oss_url}{path}")

    visit(page, f"{oss_url}/retention/")
    visit(page, f"{oss_url}/badges/")
    page.get_by_label("Run id pattern").fill("run_*")
    page.get_by_role("button", name="Make badge").click()
    expect(page.locator(".badge-preview img")).to_be_visible()
    check_still_clean(page, "badges, with a new one's preview")
    # The API documentation: Swagger UI's own script draws every operation under the same policy.
    visit(page, f"{oss_url}/api/docs/")
    expect(page.locator(".opblock").first).to_be_visible(timeout=PATIENCE_MS)
    check_still_clean(page, "the API documentation, drawn")
    # OSS has no sign-in of its own; Django admin's login page is still there, under the policy.
    visit(page, f"{oss_url}/admin/login/")
    visit(page, f"{oss_url}/runs/run_nowhere/", status=404)
    visit(page, f"{oss_url}/no/such/page/", status=404)
    expect(page.locator("h1")).to_have_text("Not found")


@pytest.mark.database_agnostic
def test_the_flake_and_failure_bars_are_drawn_to_their_rates(oss_url, page):
    # Drawn as SVG, sized by attributes rather than an inline style.
    visit(page, f"{oss_url}/nodes/")
    rows = page.locator("table.runs tbody tr")
    widths = []
    for row in rows.all():
        words = row.locator("td").last.locator(".muted").inner_text()
        flaky, failed = (int(n) for n in re.findall(r"(\d+)%", words))
        bar = row.locator("svg.rate")
        inner = bar.evaluate("svg => svg.clientWidth")
        drawn = [
            round(bar.locator(part).evaluate("r => r.getBBox().width") / inner * 100)
            for part in (".rate-flaky", ".rate-failed")
        ]
        offset = round(bar.locator(".rate-failed").evaluate("r => r.getBBox().x") / inner * 100)
        assert drawn == [flaky, failed] and offset == flaky, (words, drawn, offset)
        widths.append((flaky, failed))
    assert any(flaky for flaky, _ in widths) and any(failed for _, failed in widths), widths


# ---------------------------------------------------------------- cloud: every page, and the admin


@dataclass(frozen=True)
class CloudPeople:
    """Session cookies of people in the two-tenant world, and the ids the admin's pages need."""

    alice: str  # owner of acme
    carol: str  # member of acme, admin of globex
    stranger: str  # signed in, member of nothing
    staff: str
    acme_pk: int
    plan_pk: int
    staff_pk: int


def session_of(user) -> str:
    client = Client()
    client.force_login(user, backend="tenants.oidc.TenantOIDCBackend")
    return client.cookies["sessionid"].value


@pytest.fixture
def people(world_runs) -> CloudPeople:
    from django.contrib.auth import get_user_model

    from billing.models import Plan
    from retention.services import retention_soft_delete_expired
    from tests.retention.conftest import T0, store_run

    User = get_user_model()
    # A run retention has soft-deleted: the retention page lists it, the admin offers to restore it.
    store_run(world_runs.acme, "old_nightly", T0)
    retention_soft_delete_expired(tenant=world_runs.acme, actor="retention")
    stranger = User.objects.create_user("dave", email="dave@example.com")
    staff = User.objects.create_user("ops", email="ops@example.com", is_staff=True, is_superuser=True)
    return CloudPeople(
        alice=session_of(world_runs.alice),
        carol=session_of(world_runs.carol),
        stranger=session_of(stranger),
        staff=session_of(staff),
        acme_pk=world_runs.acme.pk,
        plan_pk=Plan.objects.get(tenants=world_runs.acme).pk,
        staff_pk=staff.pk,
    )


@pytest.fixture
def cloud_url(service_role, people) -> Iterator[str]:
    with scope_server(cloud_server_env(service_role), "--host", "127.0.0.1") as url:
        yield url


def signed_in(page, url: str, session: str) -> None:
    page.context.clear_cookies()
    page.context.add_cookies([{"name": "sessionid", "value": session, "url": url}])


@POSTGRES_ONLY[0]
@POSTGRES_ONLY[1]
@pytest.mark.django_db(transaction=True)
def test_every_cloud_page_loads_under_the_policy(cloud_url, people, page):
    url = cloud_url

    signed_in(page, url, people.alice)
    visit(page, f"{url}/")
    expect(page.locator("#live-status")).to_have_text("Live", timeout=PATIENCE_MS)
    visit(page, f"{url}/runs/acme_nightly/")
    visit(page, f"{url}/nodes/")
    visit(page, f"{url}/nodes/build/")
    visit(page, f"{url}/retention/")
    expect(page.locator("main")).to_contain_text("old_nightly")
    visit(page, f"{url}/workspaces/")
    visit(page, f"{url}/keys/")
    page.get_by_label("Name").fill("nightly-ci")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_label("The new API key")).to_be_visible()
    check_still_clean(page, "a key made")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=re.compile("Revoke")).click()
    expect(page.locator("table.keys tbody")).to_contain_text("revoked")
    check_still_clean(page, "a key revoked")
    visit(page, f"{url}/members/")
    page.get_by_label("Email").fill("dave@acme.example")
    page.get_by_role("button", name="Invite").click()
    expect(page.locator("main")).to_contain_text("dave@acme.example")
    check_still_clean(page, "a member invited")
    visit(page, f"{url}/api/docs/")
    expect(page.locator(".opblock").first).to_be_visible(timeout=PATIENCE_MS)
    check_still_clean(page, "the API documentation, drawn")
    visit(page, f"{url}/runs/nothing_here/", status=404)
    # A person who is not staff asks for the admin.
    visit(page, f"{url}/admin/login/?next=/admin/", status=403)

    # Carol, in two workspaces: the switcher in the header, and a page for managers only.
    signed_in(page, url, people.carol)
    visit(page, f"{url}/keys/", status=403)
    page.get_by_label("Workspace").select_option(label="Globex")
    page.get_by_role("button", name="Switch").click()
    expect(page.locator("h1")).to_have_text("API keys")
    check_still_clean(page, "switched to globex")
    page.screenshot(path=str(ARTIFACTS / "csp-cloud-keys.png"), full_page=True)
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{url}/signed-out/")
    check_still_clean(page, "signed out")

    signed_in(page, url, people.stranger)
    visit(page, f"{url}/workspaces/")

    # Staff in Django admin, under the same policy.
    signed_in(page, url, people.staff)
    admin = f"{url}/admin"
    for path in (
        "/",
        "/tenants/tenant/",
        "/tenants/tenant/?q=acme",
        "/tenants/tenant/add/",
        f"/tenants/tenant/{people.acme_pk}/change/",
        f"/tenants/tenant/{people.acme_pk}/restore/old_nightly/",
        "/tenants/staffaccess/",
        "/tenants/identity/",
        "/billing/plan/",
        f"/billing/plan/{people.plan_pk}/change/",
        "/auth/user/",
        f"/auth/user/{people.staff_pk}/change/",
        f"/auth/user/{people.staff_pk}/password/",
    ):
        visit(page, f"{admin}{path}")
    # The tenant page's widgets: another member row, and the people search (select2).
    visit(page, f"{admin}/tenants/tenant/{people.acme_pk}/change/")
    rows = page.locator("#memberships-group tr.dynamic-memberships")
    before = rows.count()
    page.get_by_text("Add another Membership").click()
    expect(rows).to_have_count(before + 1)
    page.locator(".select2-selection").last.click()
    page.locator(".select2-search__field").fill("car")
    expect(page.locator(".select2-results__option").first).to_contain_text("carol")
    check_still_clean(page, "the tenant page's widgets")
    page.screenshot(path=str(ARTIFACTS / "csp-admin-tenant.png"), full_page=True)
    visit(page, f"{admin}/tenants/tenant/{people.acme_pk}/delete/")
