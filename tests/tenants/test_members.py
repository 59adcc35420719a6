"""The Members page (cloud): owners and admins invite by email, change roles and remove people; the
last owner stays; only an owner makes or unmakes an owner; members are refused; every change is
recorded. Through the test client, with cloud mode's middleware."""

from __future__ import annotations

import re
from html import unescape
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from tenants.context import tenant_scope
from tenants.models import Identity, Membership, MembershipChange, Role, Tenant
from tenants.services import api_key_create, membership_create

MEMBERS = "/members/"


def roles_in(tenant) -> dict[str, str]:
    """Who is in the tenant, by email (username for someone without one), and as what."""
    with tenant_scope(tenant):
        return {
            m.user.email or m.user.username: m.role
            for m in Membership.objects.filter(tenant=tenant).select_related("user")
        }


def changes_in(tenant) -> list[tuple[str, str, str, str, str]]:
    with tenant_scope(tenant):
        return [
            (c.actor.split(" (")[0], c.action, c.subject.split(" (")[0], c.from_role, c.to_role)
            for c in MembershipChange.objects.filter(tenant=tenant).order_by("at", "id")
        ]


def membership_of(tenant, user) -> Membership:
    with tenant_scope(tenant):
        return Membership.objects.get(tenant=tenant, user=user)


def row_of(page: str, membership: Membership) -> str:
    match = re.search(rf'<tr class="member-\w+" data-membership-id="{membership.pk}">(.*?)</tr>', page, re.S)
    assert match, f"membership {membership.pk} is not listed"
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", match.group(1))).split())


def refusal_on(response) -> str:
    match = re.search(r'<p class="notice page-notice" role="alert">(.*?)</p>', response.text, re.S)
    assert match, "no refusal on the page"
    return unescape(match.group(1))


def change_role(client, membership: Membership, role: str, **headers):
    return client.post(f"/members/{membership.pk}/role/", {"role": role}, **headers)


def remove(client, membership: Membership, **headers):
    return client.post(f"/members/{membership.pk}/remove/", **headers)


GLOBEX = {"headers": {"X-Organization": "globex"}}


# ---------------------------------------------------------------- who sees the page


def test_owners_and_admins_see_the_page_and_the_header_links_it(cloud, world):
    cloud.force_login(world.alice)  # owner of acme
    page = cloud.get(MEMBERS)
    assert page.status_code == 200 and 'href="/members/"' in page.text
    assert row_of(page.text, membership_of(world.acme, world.alice)).startswith("alice@example.com (you)")
    assert "carol@example.com" in row_of(page.text, membership_of(world.acme, world.carol))
    assert "bob@example.com" not in page.text  # globex's owner
    cloud.force_login(world.carol)  # admin of globex
    assert cloud.get(MEMBERS, **GLOBEX).status_code == 200


def test_a_member_is_refused_the_page_and_every_change(cloud, world):
    alice = membership_of(world.acme, world.alice)
    cloud.force_login(world.carol)  # a member of acme
    page = cloud.get(MEMBERS)
    assert page.status_code == 403 and "Owners and admins only" in page.text
    assert 'href="/members/"' not in page.text
    assert cloud.post(MEMBERS, {"email": "dave@example.com", "role": "owner"}).status_code == 403
    assert change_role(cloud, membership_of(world.acme, world.carol), "owner").status_code == 403
    assert remove(cloud, alice).status_code == 403
    assert roles_in(world.acme) == {"alice@example.com": "owner", "carol@example.com": "member"}
    assert changes_in(world.acme) == []


def test_signed_out_visitors_and_api_keys_get_no_page(cloud, world):
    assert "/oidc/authenticate/" in cloud.get(MEMBERS)["Location"]
    _, key = api_key_create(tenant=world.acme, name="ci")
    response = cloud.post(
        MEMBERS, {"email": "dave@example.com", "role": "owner"}, HTTP_AUTHORIZATION=f"Bearer {key}"
    )
    assert response.status_code == 302
    assert "dave@example.com" not in roles_in(world.acme)


def test_oss_mode_has_no_members_page(client, local_tenant):
    assert client.get(MEMBERS).status_code == 404


# ---------------------------------------------------------------- invite


def test_an_invitation_waits_for_a_verified_sign_in_and_is_recorded(cloud, world):
    cloud.force_login(world.alice)
    response = cloud.post(MEMBERS, {"email": "Dave@Example.com", "role": "admin"})
    assert response.status_code == 302
    page = cloud.get(MEMBERS).text
    assert "Invited Dave@Example.com as admin" in page
    dave = get_user_model().objects.get(email__iexact="dave@example.com")
    assert not Identity.objects.filter(user=dave).exists()  # claimed at a verified sign-in
    row = row_of(page, membership_of(world.acme, dave))
    # Stored as Django stores an address: the domain in lower case.
    assert "Dave@example.com invited" in row
    assert changes_in(world.acme) == [("alice@example.com", "invited", "Dave@example.com", "", "admin")]
    assert "alice@example.com (user" in page and "invited Dave@example.com (user" in page

    # Invited again, in any case: refused by name, nothing doubled.
    again = cloud.post(MEMBERS, {"email": "dave@example.com", "role": "member"})
    assert again.status_code == 400
    assert refusal_on(again) == "Not done: dave@example.com is already in acme, as admin."
    assert roles_in(world.acme)["Dave@example.com"] == "admin"


def test_someone_who_signed_in_verified_joins_at_once(cloud, world):
    erin = get_user_model().objects.create_user(username="oidc_erin", email="erin@example.com")
    Identity.objects.create(user=erin, sub="erin-sub")  # signed in before, the address verified
    cloud.force_login(world.alice)
    assert cloud.post(MEMBERS, {"email": "erin@example.com", "role": "member"}).status_code == 302
    assert membership_of(world.acme, erin).role == Role.MEMBER
    assert "signed in" in row_of(cloud.get(MEMBERS).text, membership_of(world.acme, erin))


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"email": "not an address", "role": "member"}, "Email: Enter a valid email address."),
        ({"email": "", "role": "member"}, "Email: This field is required."),
        ({"email": "dave@example.com", "role": "emperor"}, "Role: Select a valid choice. emperor is not one"),
        ({"email": "dave@example.com"}, "Role: This field is required."),
    ],
)
def test_a_bad_invitation_is_refused_naming_what_is_wrong(cloud, world, fields, error):
    cloud.force_login(world.alice)
    response = cloud.post(MEMBERS, fields)
    assert response.status_code == 400
    assert error in unescape(response.text)
    assert set(roles_in(world.acme)) == {"alice@example.com", "carol@example.com"}
    assert changes_in(world.acme) == []


def test_an_admin_invites_members_and_admins_but_not_owners(cloud, world):
    cloud.force_login(world.carol)
    assert cloud.post(MEMBERS, {"email": "dave@example.com", "role": "admin"}, **GLOBEX).status_code == 302
    refused = cloud.post(MEMBERS, {"email": "eve@example.com", "role": "owner"}, **GLOBEX)
    assert refused.status_code == 403
    assert "only an owner may make someone an owner" in refusal_on(refused)
    assert roles_in(world.globex) == {
        "bob@example.com": "owner",
        "carol@example.com": "admin",
        "dave@example.com": "admin",
    }


# ---------------------------------------------------------------- roles and the last owner


def test_an_owner_changes_roles_and_each_change_is_recorded(cloud, world):
    carol = membership_of(world.acme, world.carol)
    cloud.force_login(world.alice)
    assert change_role(cloud, carol, "admin").status_code == 302
    assert change_role(cloud, carol, "owner").status_code == 302
    assert "carol@example.com (user" in cloud.get(MEMBERS).text
    assert roles_in(world.acme) == {"alice@example.com": "owner", "carol@example.com": "owner"}
    # Two owners: now alice may step down.
    assert change_role(cloud, membership_of(world.acme, world.alice), "member").status_code == 302
    assert roles_in(world.acme)["alice@example.com"] == "member"
    assert changes_in(world.acme) == [
        ("alice@example.com", "role_changed", "carol@example.com", "member", "admin"),
        ("alice@example.com", "role_changed", "carol@example.com", "admin", "owner"),
        ("alice@example.com", "role_changed", "alice@example.com", "owner", "member"),
    ]
    # No longer a manager: the page is refused to her now.
    assert cloud.get(MEMBERS).status_code == 403


def test_the_last_owner_can_be_neither_demoted_nor_removed(cloud, world):
    alice = membership_of(world.acme, world.alice)
    cloud.force_login(world.alice)
    page = cloud.get(MEMBERS).text
    assert row_of(page, alice).endswith("last owner")  # no Remove button

    for response in (change_role(cloud, alice, "admin"), remove(cloud, alice)):
        assert response.status_code == 409
        assert refusal_on(response).startswith("Not done: alice@example.com (user")
        assert "is the last owner of acme: make another owner first" in refusal_on(response)
    assert roles_in(world.acme)["alice@example.com"] == "owner"
    assert changes_in(world.acme) == []


def test_an_unknown_role_is_refused_by_name(cloud, world):
    cloud.force_login(world.alice)
    response = change_role(cloud, membership_of(world.acme, world.carol), "emperor")
    assert response.status_code == 400
    assert "'emperor' is not a role (roles: owner, admin, member)" in refusal_on(response)
    assert roles_in(world.acme)["carol@example.com"] == "member"


def test_an_admin_manages_members_and_admins_but_not_owners(cloud, world):
    dave = get_user_model().objects.create_user(username="dave", email="dave@example.com")
    membership_create(tenant=world.globex, user=dave, role=Role.MEMBER)
    bob = membership_of(world.globex, world.bob)
    cloud.force_login(world.carol)  # admin of globex
    assert change_role(cloud, membership_of(world.globex, dave), "admin", **GLOBEX).status_code == 302
    for response in (
        change_role(cloud, bob, "member", **GLOBEX),
        remove(cloud, bob, **GLOBEX),
        change_role(cloud, membership_of(world.globex, world.carol), "owner", **GLOBEX),
    ):
        assert response.status_code == 403
        assert "only an owner may" in refusal_on(response)
    assert remove(cloud, membership_of(world.globex, dave), **GLOBEX).status_code == 302
    assert roles_in(world.globex) == {"bob@example.com": "owner", "carol@example.com": "admin"}
    assert [c[1:] for c in changes_in(world.globex)] == [
        ("role_changed", "dave@example.com", "member", "admin"),
        ("removed", "dave@example.com", "admin", ""),
    ]


# ---------------------------------------------------------------- remove


def test_removing_someone_ends_their_access_and_is_recorded(cloud, world):
    cloud.force_login(world.alice)
    response = remove(cloud, membership_of(world.acme, world.carol))
    assert (response.status_code, response["Location"]) == (302, MEMBERS)
    page = cloud.get(MEMBERS).text
    assert "Removed carol@example.com (user" in page
    assert roles_in(world.acme) == {"alice@example.com": "owner"}
    assert changes_in(world.acme) == [("alice@example.com", "removed", "carol@example.com", "member", "")]
    # Carol still reads globex, and no longer acme.
    cloud.force_login(world.carol)
    assert cloud.get("/api/v1/runs/", headers={"X-Organization": "acme"}).status_code == 403
    assert cloud.get("/api/v1/runs/", headers={"X-Organization": "globex"}).status_code == 200


def test_an_admin_who_removes_themselves_lands_on_the_runs(cloud, world):
    cloud.force_login(world.carol)
    response = remove(cloud, membership_of(world.globex, world.carol), **GLOBEX)
    assert (response.status_code, response["Location"]) == (302, "/")
    assert "carol@example.com" not in roles_in(world.globex)


def test_another_workspaces_membership_is_not_found(cloud, world):
    bob = membership_of(world.globex, world.bob)
    cloud.force_login(world.alice)
    assert change_role(cloud, bob, "member").status_code == 404
    assert remove(cloud, bob).status_code == 404
    assert cloud.post("/members/999999/remove/").status_code == 404
    assert roles_in(world.globex)["bob@example.com"] == "owner"


# ---------------------------------------------------------------- the operator's owner slot


def test_create_tenant_records_its_owner_slot_and_refuses_an_owner_that_is_no_address(db):
    with pytest.raises(CommandError, match="'alice at acme' is not an email address"):
        call_command("create_tenant", "acme", "--owner", "alice at acme", stdout=StringIO())
    assert not Tenant.objects.filter(slug="acme").exists()  # nothing half-made

    call_command("create_tenant", "acme", "--owner", "alice@acme.example", stdout=StringIO())
    acme = Tenant.objects.get(slug="acme")
    assert roles_in(acme) == {"alice@acme.example": "owner"}
    assert changes_in(acme) == [("manage.py create_tenant", "invited", "alice@acme.example", "", "owner")]
