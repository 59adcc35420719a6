"""The manager of every tenant-owned model: queries are scoped to the current tenant, or refused.

`Run.objects.filter(...)` with no tenant set raises `NoTenantError` instead of reading every
tenant's rows; with a tenant set, it reads that tenant's rows only. PostgreSQL row-level security
is the second wall underneath (see `tenants.rls`).

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
