"""Django admin for tenants, memberships and plans: staff only, and through the staff path."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from tenants.context import tenant_scope
from tenants.models import Membership, StaffAccess, Tenant


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user(
        "ops", email="ops@example.com", is_staff=True, is_superuser=True
    )


def test_the_admin_is_for_staff_only(client, world):
    client.force_login(world.alice)
    for path in ("/admin/", "/admin/tenants/tenant/", "/admin/billing/plan/"):
        response = client.get(path)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], path


def test_staff_list_tenants_and_plans(client, world, staff):
    client.force_login(staff)
    page = client.get("/admin/tenants/tenant/").text
    assert "acme" in page and "globex" in page and world.acme.key_prefix in page
    assert "default" in client.get("/admin/billing/plan/").text


def test_a_tenant_page_shows_its_members_and_records_the_visit(client, world, staff):
    client.force_login(staff)
    page = client.get(f"/admin/tenants/tenant/{world.globex.pk}/change/").text
    assert "bob" in page and "carol" in page and "alice" not in page
    visit = StaffAccess.objects.get()
    assert (visit.actor, visit.tenant_slug, visit.reason) == (
        f"ops@example.com (user {staff.pk})",
        "globex",
        "admin: tenant page",
    )


def test_staff_add_a_tenant_with_its_first_member(client, world, staff):
    client.force_login(staff)
    response = client.post(
        "/admin/tenants/tenant/add/",
        {
            "slug": "initech",
            "name": "Initech",
            "key_prefix": "initech01",
            "plan": world.acme.plan_id,
            "created_at_0": "2026-11-20",
            "created_at_1": "10:00:00",
            "memberships-TOTAL_FORMS": "1",
            "memberships-INITIAL_FORMS": "0",
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
            "memberships-0-user": world.alice.pk,
            "memberships-0-role": "admin",
        },
    )
    assert response.status_code == 302, response.text
    initech = Tenant.objects.get(slug="initech")
    with tenant_scope(initech):
        assert [(m.user, m.role) for m in Membership.objects.all()] == [(world.alice, "admin")]
    assert StaffAccess.objects.filter(tenant_slug="initech", reason="admin: save members").exists()


def test_the_staff_access_record_cannot_be_edited_from_the_admin(client, world, staff):
    client.force_login(staff)
    client.get(f"/admin/tenants/tenant/{world.acme.pk}/change/")
    record = StaffAccess.objects.get()
    assert client.get("/admin/tenants/staffaccess/").status_code == 200
    assert client.post(f"/admin/tenants/staffaccess/{record.pk}/delete/", {"post": "yes"}).status_code == 403
    assert StaffAccess.objects.filter(pk=record.pk).exists()
