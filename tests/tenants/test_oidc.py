"""OIDC sign-in end to end: a real provider (oidc-provider-mock) on loopback, and Scope served in
cloud mode by `manage.py serve` in a subprocess, connected as the service role.

Each test's world is committed to the test database (transactional tests), where the server reads
it under row-level security like production would.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from urllib.parse import quote, urljoin, urlparse

import pytest
import requests

from tenants.models import Identity
from tests.conftest import scope_server
from tests.tenants.conftest import POSTGRES_ONLY, cloud_server_env

pytestmark = [
    *POSTGRES_ONLY,
    pytest.mark.django_db(transaction=True),
    # The provider's own dependencies (authlib) warn about their own deprecations on every token.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

oidc_provider_mock = pytest.importorskip("oidc_provider_mock")


@dataclass(frozen=True)
class Provider:
    url: str
    endpoints: dict[str, str]

    def set_user(self, sub: str, **claims: object) -> None:
        """What the provider will say about `sub` at its next sign-in."""
        response = requests.put(f"{self.url}/users/{quote(sub, safe='')}", json=claims, timeout=5)
        assert response.status_code == 204


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with oidc_provider_mock.run_server_in_thread() as server:
        url = f"http://localhost:{server.server_port}"
        config = requests.get(f"{url}/.well-known/openid-configuration", timeout=5).json()
        yield Provider(url=url, endpoints=config)


@pytest.fixture(scope="module")
def scope_url(service_role, provider, django_db_blocker) -> Iterator[str]:
    """Scope in cloud mode, served by `manage.py serve` as the service role, signing in with `provider`."""
    with django_db_blocker.unblock():
        env = cloud_server_env(
            service_role,
            OIDC_OP_AUTHORIZATION_ENDPOINT=provider.endpoints["authorization_endpoint"],
            OIDC_OP_TOKEN_ENDPOINT=provider.endpoints["token_endpoint"],
            OIDC_OP_USER_ENDPOINT=provider.endpoints["userinfo_endpoint"],
            OIDC_OP_JWKS_ENDPOINT=provider.endpoints["jwks_uri"],
            OIDC_TIMEOUT="5",
        )
    with scope_server(env, "--host", "127.0.0.1") as url:
        yield url


class Browser:
    """A person's browser, reduced to cookies and redirects: every hop is checked, none skipped."""

    def __init__(self, scope_url: str) -> None:
        self.scope_url = scope_url
        self.session = requests.Session()
        self.callbacks: list[str] = []

    def get(self, url: str) -> requests.Response:
        """Follows redirects one by one, remembering every OIDC callback visited."""
        target = urljoin(self.scope_url, url)
        while True:
            if urlparse(target).path == "/oidc/callback/":
                self.callbacks.append(target)
            response = self.session.get(target, allow_redirects=False, timeout=10)
            if not response.is_redirect:
                return response
            target = urljoin(response.url, response.headers["Location"])

    def authorize(self, form_page: requests.Response, sub: str) -> requests.Response:
        """Submits the provider's sign-in form as `sub`, then follows Scope's redirects."""
        assert "Authorize" in form_page.text, form_page.text[:500]
        response = self.session.post(form_page.url, data={"sub": sub}, allow_redirects=False, timeout=10)
        assert response.is_redirect, response.text[:500]
        return self.get(urljoin(form_page.url, response.headers["Location"]))

    def sign_in(self, sub: str, start: str = "/") -> requests.Response:
        return self.authorize(self.get(start), sub)

    def sign_out(self) -> requests.Response:
        token = self.session.cookies.get("csrftoken") or self._csrf_from(self.get("/workspaces/").text)
        response = self.session.post(
            f"{self.scope_url}/oidc/logout/",
            data={"csrfmiddlewaretoken": token},
            headers={"Referer": f"{self.scope_url}/"},
            allow_redirects=False,
            timeout=10,
        )
        assert response.status_code == 302, response.text[:500]
        return self.get(response.headers["Location"])

    @staticmethod
    def _csrf_from(page: str) -> str:
        return unescape(re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1))


def shown_runs(response: requests.Response) -> set[str]:
    return {name for name in ("acme_nightly", "globex_nightly") if name in response.text}


def test_sign_in_lands_on_the_history_of_the_right_tenant_then_sign_out(world_runs, provider, scope_url):
    provider.set_user("alice-sub", email="alice@example.com", email_verified=True, name="Alice Liddell")
    browser = Browser(scope_url)
    page = browser.get("/")
    assert urlparse(page.url).netloc == urlparse(provider.url).netloc  # at the provider
    page = browser.sign_in("alice-sub")
    assert (page.status_code, urlparse(page.url).path) == (200, "/")
    assert "Run history" in page.text
    assert shown_runs(page) == {"acme_nightly"}
    assert "Acme" in page.text and "alice@example.com" in page.text
    # The first sign-in claimed the user made for alice's email; the sub is the key from now on.
    identity = Identity.objects.select_related("user").get(sub="alice-sub")
    assert identity.user == world_runs.alice
    assert identity.user.first_name == "Alice Liddell"

    page = browser.sign_out()
    assert urlparse(page.url).path == "/signed-out/" and "Signed out" in page.text
    # Signed out: the history sends the browser back to the provider, and the API refuses.
    assert urlparse(browser.get("/").url).netloc == urlparse(provider.url).netloc
    api = browser.session.get(f"{scope_url}/api/v1/runs/", timeout=10)
    assert api.status_code == 401
    assert api.json()["error"]["code"] == "not_authenticated"


def test_a_replayed_callback_ends_in_a_fresh_sign_in(world_runs, provider, scope_url):
    provider.set_user("bob-sub", email="bob@example.com", email_verified=True)
    browser = Browser(scope_url)
    assert shown_runs(browser.sign_in("bob-sub")) == {"globex_nightly"}
    used = browser.callbacks[-1]

    # Replayed while signed in: its state is spent and its code redeemed; no 400, no 500.
    page = browser.get(used)
    assert page.status_code == 200
    assert urlparse(page.url).netloc == urlparse(provider.url).netloc, "not sent to a fresh sign-in"
    assert shown_runs(browser.authorize(page, "bob-sub")) == {"globex_nightly"}

    # Replayed by a browser with no sign-in under way at all (a stale bookmark, another device).
    stranger = Browser(scope_url)
    page = stranger.get(used)
    assert page.status_code == 200
    assert urlparse(page.url).netloc == urlparse(provider.url).netloc
    assert shown_runs(stranger.authorize(page, "bob-sub")) == {"globex_nightly"}


def test_a_sign_in_that_keeps_failing_ends_on_a_page_not_in_a_loop(world_runs, provider, scope_url):
    provider.set_user("bob-sub", email="bob@example.com", email_verified=True)
    signed_in = Browser(scope_url)
    signed_in.sign_in("bob-sub")
    stale = signed_in.callbacks[-1]
    stranger = Browser(scope_url)
    for _ in range(3):
        assert urlparse(stranger.get(stale).url).netloc == urlparse(provider.url).netloc
    page = stranger.get(stale)
    assert (page.status_code, urlparse(page.url).path) == (200, "/oidc/callback/")
    assert "Sign-in did not finish" in page.text and "Try signing in again" in page.text


def test_declining_at_the_provider_ends_on_a_page_not_an_error(world_runs, provider, scope_url):
    browser = Browser(scope_url)
    form = browser.get("/")
    declined = browser.session.post(form.url, data={"action": "deny"}, allow_redirects=False, timeout=10)
    page = browser.get(urljoin(form.url, declined.headers["Location"]))
    assert page.status_code == 200
    assert "The sign-in was cancelled" in page.text


def test_users_are_matched_by_sub_and_email_only_shows(world_runs, provider, scope_url):
    provider.set_user("carol-sub", email="carol@example.com", email_verified=True)
    assert shown_runs(Browser(scope_url).sign_in("carol-sub")) == {"acme_nightly"}  # first membership

    # Carol's email changes at the provider: same person, same tenants; the new email is shown.
    provider.set_user("carol-sub", email="carol@new.example", email_verified=True)
    page = Browser(scope_url).sign_in("carol-sub")
    assert shown_runs(page) == {"acme_nightly"} and "carol@new.example" in page.text

    # Someone else now claims carol's old address: a new, empty account, not carol's.
    provider.set_user("mallory-sub", email="carol@example.com", email_verified=True)
    page = Browser(scope_url).sign_in("mallory-sub")
    assert "No workspace yet" in page.text and shown_runs(page) == set()
    # An unverified email claims nothing either.
    provider.set_user("eve-sub", email="alice@example.com", email_verified=False)
    page = Browser(scope_url).sign_in("eve-sub")
    assert "No workspace yet" in page.text
    assert Identity.objects.get(sub="eve-sub").user != world_runs.alice


def test_a_person_in_two_tenants_switches_between_them(world_runs, provider, scope_url):
    provider.set_user("carol-sub", email="carol@example.com", email_verified=True)
    browser = Browser(scope_url)
    page = browser.sign_in("carol-sub")
    assert shown_runs(page) == {"acme_nightly"}
    response = browser.session.post(
        f"{scope_url}/workspaces/switch/",
        data={"tenant": "globex", "csrfmiddlewaretoken": browser._csrf_from(page.text)},
        headers={"Referer": f"{scope_url}/"},
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302
    assert shown_runs(browser.get("/")) == {"globex_nightly"}
    # The header chooses for one request, and only among carol's tenants.
    headers = {"X-Organization": "acme"}
    assert shown_runs(browser.session.get(f"{scope_url}/", headers=headers, timeout=10)) == {"acme_nightly"}
    other = browser.session.get(
        f"{scope_url}/api/v1/runs/", headers={"X-Organization": "initech"}, timeout=10
    )
    assert other.status_code == 403


def test_sign_in_and_out_in_headless_chromium(world_runs, provider, scope_url, tmp_path):
    # As the browser suite does (tests/browser/conftest.py): a missing browser fails, never skips.
    if not os.path.exists("/usr/bin/chromium"):
        pytest.fail("/usr/bin/chromium is missing: run `make services` (apt-get install chromium) first")
    from playwright import sync_api

    provider.set_user("alice-sub", email="alice@example.com", email_verified=True, name="Alice")
    with sync_api.sync_playwright() as playwright:
        # Debian's chromium, never a downloaded one; a fresh profile, and no calls home.
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path="/usr/bin/chromium",
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(f"{scope_url}/")
            page.get_by_placeholder("sub").fill("alice-sub")
            page.get_by_role("button", name="Authorize").click()
            page.wait_for_url(f"{scope_url}/")
            body = page.locator("body").inner_text()
            assert "Run history" in body and "acme_nightly" in body and "globex_nightly" not in body
            page.get_by_role("button", name="Sign out").click()
            page.wait_for_url(f"{scope_url}/signed-out/")
            assert "You are signed out" in page.locator("body").inner_text()
            page.goto(f"{scope_url}/")
            assert page.url.startswith(provider.url)  # signed out: back to the provider
        finally:
            browser.close()
