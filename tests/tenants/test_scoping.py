"""Scoping in code: the manager of tenant-owned models and every API view refuse to run with no
tenant, and see only the current tenant's rows when one is set."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIRequestFactory
from rest_framework.views import APIView

from runs.api import RunListApi
from runs.models import Diagnostic, Event, Run, RunNode
from tenants.context import (
    NoTenantError,
    request_transaction,
    tenant_atomic,
    tenant_current_or_none,
    tenant_scope,
)
from tenants.models import Membership
from tenants.permissions import HasScope, HasTenant


@pytest.mark.parametrize("model", [Run, Event, Diagnostic, RunNode, Membership])
def test_the_manager_with_no_tenant_raises(world_runs, model):
    with pytest.raises(NoTenantError):
        model.objects.all()
    with pytest.raises(NoTenantError):
        model.objects.filter(tenant=world_runs.acme).exists()


def test_related_managers_are_scoped_too(world_runs):
    with pytest.raises(NoTenantError):
        list(world_runs.acme.memberships.all())
    with tenant_scope(world_runs.globex):
        # Asked through acme, but acting for globex: nothing of acme's.
        assert list(world_runs.acme.memberships.all()) == []
        assert [m.user.username for m in world_runs.globex.memberships.all()] == ["bob", "carol"]


def test_with_a_tenant_the_manager_sees_only_its_rows(world_runs):
    with tenant_scope(world_runs.acme):
        assert list(Run.objects.values_list("run_id", flat=True)) == ["acme_nightly"]
        with pytest.raises(Run.DoesNotExist):
            Run.objects.get(run_id="globex_nightly")
        assert Event.objects.count() == 6
        assert {m.user.username for m in Membership.objects.all()} == {"alice", "carol"}


def test_unscoped_is_the_spelled_bypass(world_runs):
    # On SQLite, and for the migrating role on PostgreSQL, nothing else stands in the way.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = current_user")
            assert cursor.fetchone()[0], "this test runs as the migrating role"
    assert set(Run.objects.unscoped().values_list("run_id", flat=True)) == {"acme_nightly", "globex_nightly"}


def test_a_unit_of_work_gets_its_tenant_and_leaves_none_behind(world_runs):
    # A command's or a task's way to act for a tenant.
    with tenant_atomic(world_runs.globex) as tenant:
        assert tenant_current_or_none() == tenant
        assert list(Run.objects.values_list("run_id", flat=True)) == ["globex_nightly"]
    assert tenant_current_or_none() is None


def test_on_sqlite_a_request_opens_no_transaction(world):
    # SQLite has no row-level security to bind, and a transaction would hold its one write lock.
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's behaviour")
    depth = len(connection.atomic_blocks)
    with request_transaction() as unit, unit.bind(world.acme):
        assert unit.atomic is False
        assert len(connection.atomic_blocks) == depth
        assert tenant_current_or_none() == world.acme


# ---------------------------------------------------------------- every API view


def _api_views(patterns=None) -> list[type[APIView]]:
    views = []
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            views += _api_views(pattern.url_patterns)
        elif isinstance(pattern, URLPattern):
            view = getattr(pattern.callback, "cls", None)
            if isinstance(view, type) and issubclass(view, APIView):
                views.append(view)
    return views


def test_every_api_view_keeps_the_tenant_check_and_the_key_scopes():
    # DRF's default permissions: a view listing its own would drop them, opening it to no tenant,
    # or to any API key.
    views = _api_views()
    assert RunListApi in views
    for view in views:
        assert HasTenant in view.permission_classes and HasScope in view.permission_classes, view


def test_an_api_view_refuses_to_run_with_no_tenant(world_runs):
    response = RunListApi.as_view()(APIRequestFactory().get("/api/v1/runs/"))
    assert response.status_code in (401, 403)


# ---------------------------------------------------------------- a request is one unit of work


@pytest.mark.postgres
@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite requests open no transaction")
@pytest.mark.parametrize(
    ("status", "kept"), [(200, True), (302, True), (404, False), (409, False), (500, False)]
)
def test_a_request_answered_with_an_error_writes_nothing(db, rf, status, kept):
    from django.http import HttpResponse

    from tenants.middleware import CloudTenantMiddleware
    from tenants.models import StaffAccess

    def view(request):
        # Written, then refused: an error answer must not leave half of what the view did.
        StaffAccess.objects.create(actor="view", tenant_ref=1, tenant_slug="acme", reason=f"status {status}")
        return HttpResponse(status=status)

    request = rf.get("/anything")
    request.user = AnonymousUser()
    response = CloudTenantMiddleware(view)(request)
    assert response.status_code == status
    assert StaffAccess.objects.filter(reason=f"status {status}").exists() is kept
