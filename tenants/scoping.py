"""The manager of every tenant-owned model: queries are scoped to the current tenant, or refused.

`Run.objects.filter(...)` with no tenant set raises `NoTenantError` instead of reading every
tenant's rows; with a tenant set, it reads that tenant's rows only. PostgreSQL row-level security
is the second wall underneath (see `tenants.rls`).

The one rule for `tenant=` and the manager: the tenant a function acts for is given to it, and
every query it makes names it. The current tenant is read once, at the edge (a view, an API view,
a socket's consumer, the rate limit), with `tenant_current()`, and passed down as `tenant=` (or as
a row of the tenant, a membership or a key, whose `.tenant` it is); services and selectors take it
as a keyword and write `filter(tenant=tenant, ...)` and `create(tenant=tenant, ...)`, even for a
row they already hold by its pk. The manager is never the filter a function relies on: it is the
wall beneath, refusing a query made with no tenant bound, and, with row-level security, showing
nothing of a tenant other than the bound one. A function that opens its own unit of work binds the
tenant it was given (`tenant_atomic(tenant)`).

The bypass is spelled `unscoped()` so that every use can be found with grep: only the staff path
(`tenants.staff`) and the narrow pre-tenant lookups call it.
"""

from __future__ import annotations

from typing import TypeVar

from django.db import models

from tenants.context import tenant_current

_M = TypeVar("_M", bound=models.Model)


class TenantScopedManager(models.Manager[_M]):
    # Related managers (`run.events`) are built from the default manager's class, so they are
    # scoped too; `_base_manager` (saves, deletes, forward foreign keys) stays a plain manager.

    def get_queryset(self) -> models.QuerySet[_M]:
        return super().get_queryset().filter(tenant=tenant_current())

    def unscoped(self) -> models.QuerySet[_M]:
        """Every tenant's rows, as far as the code is concerned. Staff path only."""
        return super().get_queryset()
