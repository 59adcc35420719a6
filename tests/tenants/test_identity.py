"""Who a sign-in is (SPEC section 8), tried as an attacker would: a real provider (oidc-provider-mock)
on loopback, Scope in cloud mode served by `manage.py serve` as the service role, and the operator's
`manage.py create_tenant` in a subprocess.

Identity is the provider's `sub`; an email names a person only when the provider reports
`email_verified: true`: only then does it claim an owner slot or an invitation, and an unverified
email is never stored as the user's address.
"""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import urlparse

import pytest
import requests
from django.contrib.auth import get_user_model

from tenants.models import Identity, Membership, MembershipChange, Tenant
from tests.conftest import manage
from tests.tenants import test_oidc
from tests.tenants.conftest import POSTGRES_ONLY
from tests.tenants.test_oidc import Browser, shown_runs

pytestmark = [
    *POSTGRES_ONLY,
    pytest.mark.django_db(transaction=True),
    # The provider's own dependencies (authlib) warn about their own deprecations on every token.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

CAROL = "carol@initech.example"

# The sign-in tests' provider on loopback and Scope served against it, one of each for this module.
provider = test_oidc.provider
scope_url = test_oidc.scope_url


def text_of(page: requests.Response) -> str:
    """The page's words, as a person reads them."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", page.text)).split())


def create_tenant(*args: str) -> str:
    """The operator's command, run as the operator runs it."""
    result = manage("create_tenant", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def user_of(sub: str):
    return Identity.objects.select_related("user").get(sub=sub).user


def memberships_of(user) -> list[tuple[str, str]]:
    # The test's own connection may read every tenant's rows: it checks what the service stored.
    return sorted(
        (m.tenant.slug, m.role)
        for m in Membership.objects.unscoped().filter(user=user).select_related("tenant")
    )


def sees_workspace(browser: Browser, scope: str, slug: str) -> bool:
    """Whether this browser's session acts for the workspace `slug`: its API answers for it."""
    response = browser.session.get(f"{scope}/api/v1/runs/", headers={"X-Organization": slug}, timeout=10)
    assert response.status_code in (200, 403), response.text[:300]
    return response.status_code == 200


def manages(browser: Browser, slug: str) -> bool:
    """Whether the keys page of the session's current workspace is open to it, and for `slug`."""
    page = browser.get("/keys/")
    return page.status_code == 200 and "Create a key" in page.text and slug in page.text.lower()


def csrf_post(browser: Browser, scope: str, path: str, page_path: str, **data: str) -> requests.Response:
    page = browser.get(page_path)
    token = Browser._csrf_from(page.text)
    return browser.session.post(
        f"{scope}{path}",
        data={"csrfmiddlewaretoken": token, **data},
        headers={"Referer": f"{scope}{page_path}"},
        allow_redirects=False,
        timeout=10,
    )


# ---------------------------------------------------------------- the owner slot of create_tenant


def test_an_unverified_email_signed_in_first_does_not_take_the_owner_slot(world, provider, scope_url):
    # The impostor's provider says the address is carol's, but does not vouch for it.
    provider.set_user("impostor-sub", email=CAROL, email_verified=False, name="Not Carol")
    impostor = Browser(scope_url)
    page = impostor.sign_in("impostor-sub")
    assert "No workspace yet" in page.text
    assert user_of("impostor-sub").email == ""  # never stored as the user's address

    # The operator then names carol as the owner of a new tenant.
    assert f"owner {CAROL}" in create_tenant("initech", "--name", "Initech", "--owner", CAROL)

    # The impostor, signed in already and signing in again, gets nothing of it.
    assert not sees_workspace(impostor, scope_url, "initech")
    assert "No workspace yet" in impostor.get("/keys/").text
    impostor = Browser(scope_url)
    assert "No workspace yet" in impostor.sign_in("impostor-sub").text
    assert not sees_workspace(impostor, scope_url, "initech")

    # The real carol, verified, signs in: the slot is hers.
    provider.set_user("carol-sub", email=CAROL, email_verified=True, name="Carol")
    carol = Browser(scope_url)
    page = carol.sign_in("carol-sub")
    assert (page.status_code, urlparse(page.url).path) == (200, "/")
    assert "Initech" in page.text and "Run history" in page.text
    assert manages(carol, "initech")
    members = carol.get("/members/")
    assert members.status_code == 200 and f"{CAROL} Carol (you) signed in" in text_of(members)

    assert memberships_of(user_of("carol-sub")) == [("initech", "owner")]
    assert memberships_of(user_of("impostor-sub")) == []
    initech = Tenant.objects.get(slug="initech")
    record = MembershipChange.objects.unscoped().get(tenant=initech)
    assert (record.actor, record.action, record.to_role) == ("manage.py create_tenant", "invited", "owner")


def test_a_verified_sign_in_first_is_given_the_owner_slot_at_once(world, provider, scope_url):
    provider.set_user("carol-sub", email=CAROL, email_verified=True)
    carol = Browser(scope_url)
    assert "No workspace yet" in carol.sign_in("carol-sub").text
    assert user_of("carol-sub").email == CAROL

    create_tenant("initech", "--name", "Initech", "--owner", CAROL)

    # Her session, unchanged, now acts for initech as its owner; no second user was made for her.
    page = carol.get("/")
    assert "Initech" in page.text and "Run history" in page.text
    assert sees_workspace(carol, scope_url, "initech") and manages(carol, "initech")
    assert get_user_model().objects.filter(email__iexact=CAROL).count() == 1
    assert memberships_of(user_of("carol-sub")) == [("initech", "owner")]


def test_an_email_the_provider_stops_verifying_is_forgotten_and_claims_nothing(world, provider, scope_url):
    provider.set_user("carol-sub", email=CAROL, email_verified=True)
    Browser(scope_url).sign_in("carol-sub")
    assert user_of("carol-sub").email == CAROL
    provider.set_user("carol-sub", email=CAROL, email_verified=False)
    Browser(scope_url).sign_in("carol-sub")
    assert user_of("carol-sub").email == ""

    # The slot waits for the address's next verified sign-in: carol's, once her provider vouches again.
    create_tenant("initech", "--owner", CAROL)
    assert memberships_of(user_of("carol-sub")) == []
    provider.set_user("carol-sub", email=CAROL, email_verified=True)
    carol = Browser(scope_url)
    carol.sign_in("carol-sub")
    assert user_of("carol-sub").email == CAROL
    assert memberships_of(user_of("carol-sub")) == [("initech", "owner")]
    assert manages(carol, "initech")
    # The user that held the slot for the address is gone: one user has it.
    assert get_user_model().objects.filter(email__iexact=CAROL).count() == 1


def test_memberships_waiting_for_an_address_join_its_verified_holders_own(world, provider, scope_url):
    from tenants.services import membership_create

    # Carol first signs in with her address unverified: a user of her own, nothing of what waits
    # for carol@example.com (member of acme, admin of globex, on the user made for the address).
    provider.set_user("carol-sub", email="carol@example.com", email_verified=False)
    carol = Browser(scope_url)
    assert "No workspace yet" in carol.sign_in("carol-sub").text
    mine = user_of("carol-sub")
    assert mine != world.carol
    membership_create(tenant=world.acme, user=mine, role="admin")  # given to her own user meanwhile

    provider.set_user("carol-sub", email="carol@example.com", email_verified=True)
    carol = Browser(scope_url)
    carol.sign_in("carol-sub")
    # Where both held a membership the stronger role stays; the rest is hers; the stand-in is gone.
    assert memberships_of(mine) == [("acme", "admin"), ("globex", "admin")]
    assert not get_user_model().objects.filter(pk=world.carol.pk).exists()
    assert sees_workspace(carol, scope_url, "globex") and manages(carol, "acme")


# ---------------------------------------------------------------- invitations from the Members page


def test_an_invitation_goes_to_the_verified_holder_of_the_address_only(world_runs, provider, scope_url):
    provider.set_user("alice-sub", email="alice@example.com", email_verified=True)
    alice = Browser(scope_url)
    alice.sign_in("alice-sub")  # the owner of acme
    invited = csrf_post(alice, scope_url, "/members/", "/members/", email="dave@acme.example", role="admin")
    assert invited.status_code == 302, invited.text[:500]
    assert "Invited dave@acme.example as admin" in alice.get("/members/").text

    provider.set_user("impostor-sub", email="dave@acme.example", email_verified=False)
    impostor = Browser(scope_url)
    assert "No workspace yet" in impostor.sign_in("impostor-sub").text
    assert not sees_workspace(impostor, scope_url, "acme")

    provider.set_user("dave-sub", email="dave@acme.example", email_verified=True)
    dave = Browser(scope_url)
    assert shown_runs(dave.sign_in("dave-sub")) == {"acme_nightly"}
    assert manages(dave, "acme")  # an admin
    assert memberships_of(user_of("dave-sub")) == [("acme", "admin")]
    assert memberships_of(user_of("impostor-sub")) == []
    assert "dave@acme.example signed in" in text_of(alice.get("/members/"))


def test_an_invitation_to_someone_signed_in_verified_takes_effect_at_once(world_runs, provider, scope_url):
    provider.set_user("erin-sub", email="erin@example.com", email_verified=True)
    erin = Browser(scope_url)
    assert "No workspace yet" in erin.sign_in("erin-sub").text
    provider.set_user("mallory-sub", email="mallory@example.com", email_verified=False)
    mallory = Browser(scope_url)
    mallory.sign_in("mallory-sub")

    provider.set_user("alice-sub", email="alice@example.com", email_verified=True)
    alice = Browser(scope_url)
    alice.sign_in("alice-sub")
    assert csrf_post(
        alice, scope_url, "/members/", "/members/", email="erin@example.com", role="member"
    ).is_redirect

    assert shown_runs(erin.get("/")) == {"acme_nightly"}
    assert not manages(erin, "acme")  # a member reads
    # Mallory's address was never verified, so it names no one here: her invitation waits for a
    # verified sign-in with it, and her session gets nothing.
    assert csrf_post(
        alice, scope_url, "/members/", "/members/", email="mallory@example.com", role="owner"
    ).is_redirect
    assert not sees_workspace(mallory, scope_url, "acme")
    assert "No workspace yet" in Browser(scope_url).sign_in("mallory-sub").text
    assert memberships_of(user_of("mallory-sub")) == []


def test_a_member_signed_in_cannot_write_runs_with_the_session(world_runs, provider, scope_url):
    provider.set_user("carol-sub", email="carol@example.com", email_verified=True)
    carol = Browser(scope_url)
    carol.sign_in("carol-sub")  # a member of acme
    token = carol.session.cookies.get("csrftoken")
    response = carol.session.post(
        f"{scope_url}/api/v1/runs/acme_nightly/events",
        data=b'{"ts":"2026-11-20T10:00:00.000Z","event":"checkpoint"}\n',
        headers={"Content-Type": "application/x-ndjson", "X-CSRFToken": token, "Referer": f"{scope_url}/"},
        timeout=10,
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"
    summary = carol.session.put(
        f"{scope_url}/api/v1/runs/acme_nightly/summary",
        json={"outcome": "clean"},
        headers={"X-CSRFToken": token, "Referer": f"{scope_url}/"},
        timeout=10,
    )
    assert summary.status_code == 403 and summary.json()["error"]["code"] == "insufficient_scope"
    assert carol.session.get(f"{scope_url}/api/v1/runs/acme_nightly/summary", timeout=10).status_code == 404
