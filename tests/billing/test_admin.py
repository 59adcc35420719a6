"""Plans in Django admin (SPEC section 9): listed with their tenants, edited, and the tenant page
shows what the tenant uses against its plan."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model

from billing.models import Plan
from retention.services import retention_soft_delete_expired
from tenants.services import api_key_create
from tests.retention.conftest import T0, store_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user(
        "ops", email="ops@example.com", is_staff=True, is_superuser=True
    )


@pytest.fixture
def team_plan(world) -> Plan:
    plan = Plan.objects.create(slug="team", name="Team", retention_days=30, hard_delete_after_days=3)
    world.globex.plan = plan
    world.globex.save()
    return plan


def plan_form(plan: Plan, **changes) -> dict:
    fields = (
        "slug",
        "name",
        "retention_days",
        "hard_delete_after_days",
        "ingest_requests_per_minute",
        "max_api_keys",
    )
    return {**{name: getattr(plan, name) for name in fields}, **changes}


def test_the_plan_list_shows_every_limit_and_how_many_tenants_are_on_it(client, staff, world, team_plan):
    client.force_login(staff)
    page = client.get("/admin/billing/plan/").text
    # default: local, acme; team: globex. Each count links to the tenant list filtered by plan.
    assert f'href="/admin/tenants/tenant/?plan__id__exact={team_plan.pk}">1</a>' in page
    assert f'href="/admin/tenants/tenant/?plan__id__exact={world.acme.plan_id}">2</a>' in page
    filtered = client.get(f"/admin/tenants/tenant/?plan__id__exact={team_plan.pk}").text
    assert "globex" in filtered and "acme" not in filtered


def test_a_plan_page_names_its_tenants_and_saves_a_change(client, staff, world, team_plan):
    client.force_login(staff)
    page = client.get(f"/admin/billing/plan/{team_plan.pk}/change/").text
    assert f'<a href="/admin/tenants/tenant/{world.globex.pk}/change/">globex</a>' in page
    assert "acme" not in page

    response = client.post(
        f"/admin/billing/plan/{team_plan.pk}/change/", plan_form(team_plan, retention_days=14)
    )
    assert response.status_code == 302, response.text
    team_plan.refresh_from_db()
    assert team_plan.retention_days == 14


def test_a_plan_keeps_runs_at_least_one_day(client, staff, team_plan):
    client.force_login(staff)
    response = client.post(
        f"/admin/billing/plan/{team_plan.pk}/change/", plan_form(team_plan, retention_days=0)
    )
    assert response.status_code == 200 and "greater than or equal to 1" in response.text
    team_plan.refresh_from_db()
    assert team_plan.retention_days == 30


def test_a_plan_in_use_cannot_be_deleted(client, staff, team_plan):
    client.force_login(staff)
    client.post(f"/admin/billing/plan/{team_plan.pk}/delete/", {"post": "yes"})
    assert Plan.objects.filter(pk=team_plan.pk).exists()


def test_the_tenant_page_shows_usage_against_the_plan(client, staff, world, team_plan):
    store_run(world.globex, "fresh", T0 - timedelta(days=1))
    store_run(world.globex, "older", T0 - timedelta(days=10))
    store_run(world.globex, "expired", T0 - timedelta(days=40))
    retention_soft_delete_expired(tenant=world.globex, actor="job", now=T0)
    api_key_create(tenant=world.globex, name="ci")
    client.force_login(staff)

    page = client.get(f"/admin/tenants/tenant/{world.globex.pk}/change/").text

    assert (
        "<tr><th>runs kept</th><td>2</td><td>oldest last active 2026-05-22; plan keeps 30 days</td></tr>"
        in page
    )
    assert "<tr><th>runs soft-deleted</th><td>1</td><td>restorable for 3 days</td></tr>" in page
    assert "<tr><th>events</th><td>18</td>" in page
    assert "<tr><th>API keys</th><td>1 of 10</td>" in page
    assert "<tr><th>ingest</th><td>600</td>" in page
