"""The API documentation in a real browser: from the header's "API" link to Swagger UI showing the
schema's endpoints, with every request the page makes going to this site alone."""

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ARTIFACTS
from tests.conftest import manage_env, scope_server

# The pages a browser draws are the same HTML on either database (tests/runs checks the HTML on both).
pytestmark = pytest.mark.database_agnostic

ENDPOINTS = {
    ("GET", "/api/v1/runs/"),
    ("GET", "/api/v1/runs/{run_id}/"),
    ("GET", "/api/v1/runs/{run_id}/events"),
    ("POST", "/api/v1/runs/{run_id}/events"),
    ("GET", "/api/v1/runs/{run_id}/graph"),
    ("PUT", "/api/v1/runs/{run_id}/graph"),
    ("GET", "/api/v1/runs/{run_id}/summary"),
    ("PUT", "/api/v1/runs/{run_id}/summary"),
    ("GET", "/api/v1/runs/{run_id}/archive"),
    ("GET", "/api/v1/runs/export"),
    ("GET", "/api/v1/metrics"),
    ("GET", "/api/v1/alerts/rules/"),
    ("POST", "/api/v1/alerts/rules/"),
    ("GET", "/api/v1/alerts/rules/{rule_id}/"),
    ("PATCH", "/api/v1/alerts/rules/{rule_id}/"),
    ("DELETE", "/api/v1/alerts/rules/{rule_id}/"),
    ("POST", "/api/v1/alerts/rules/{rule_id}/test"),
    ("GET", "/api/v1/alerts/deliveries/"),
}


@pytest.fixture
def server_url(transactional_db, local_tenant):
    with scope_server(manage_env(), "--no-follow") as url:
        yield url


def test_the_header_leads_to_docs_that_render_every_endpoint_from_this_site_alone(server_url, browser_page):
    page = browser_page
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{server_url}/")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="API", exact=True).click()
    expect(page).to_have_url(f"{server_url}/api/docs/")

    operations = page.locator(".opblock")
    expect(operations).to_have_count(len(ENDPOINTS))
    shown = {
        (
            operation.locator(".opblock-summary-method").inner_text().strip(),
            operation.locator(".opblock-summary-path").get_attribute("data-path"),
        )
        for operation in operations.all()
    }
    assert shown == ENDPOINTS
    expect(page.locator(".info .title")).to_contain_text("KAHN Scope API")
    page.screenshot(path=str(ARTIFACTS / "api-docs.png"), full_page=True)

    # One operation opened, as a reader would: its parameters come from the schema.
    page.locator(".opblock-get").filter(has_text="/api/v1/runs/{run_id}/events").first.locator(
        ".opblock-summary"
    ).click()
    expect(page.locator(".parameters-col_name").filter(has_text="after_seq")).to_be_visible()

    site = urlsplit(server_url).netloc
    elsewhere = [url for url in requested if not url.startswith("data:") and urlsplit(url).netloc != site]
    assert elsewhere == []
    assert any(url.endswith("/api/v1/schema/") for url in requested)


# What the site's policy allows at most: its own origin, and images inlined as data: URLs.
STRICT_POLICY = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'"


def test_the_docs_render_under_a_policy_that_allows_nothing_inline(server_url, browser_page):
    page = browser_page

    def with_strict_policy(route) -> None:
        response = route.fetch()
        headers = {**response.headers, "content-security-policy": STRICT_POLICY}
        route.fulfill(response=response, headers=headers)

    page.route(f"{server_url}/**", with_strict_policy)
    violations: list[str] = []
    page.on(
        "console",
        lambda message: "Content Security Policy" in message.text and violations.append(message.text),
    )
    page.goto(f"{server_url}/api/docs/")
    expect(page.locator(".opblock")).to_have_count(len(ENDPOINTS))
    assert violations == []
