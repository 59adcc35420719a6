"""The current tenant: one ContextVar, set for a request, a socket or a task, and cleared after.

Everything that reads or writes tenant data asks `tenant_current()`, which raises rather than
guess: scoping fails closed.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.db import connections, transaction

from tenants.models import Tenant

_current_tenant: ContextVar[Tenant | None] = ContextVar("kahn_current_tenant", default=None)


class NoTenantError(RuntimeError):
    """Tenant data was touched with no tenant set: a bug, never a reason to show everything."""


def tenant_current() -> Tenant:
    tenant = _current_tenant.get()
    if tenant is None:
        raise NoTenantError("no tenant is set for this request, socket or task")
    return tenant


def tenant_current_or_none() -> Tenant | None:
    return _current_tenant.get()


@contextmanager
def tenant_scope(tenant: Tenant) -> Iterator[Tenant]:
    token = _current_tenant.set(tenant)
    try:
        yield tenant
    finally:
        _current_tenant.reset(token)


@contextmanager
def tenant_atomic(tenant: Tenant, *, using: str = "default") -> Iterator[Tenant]:
    """A transaction acting for `tenant`, in code and, on PostgreSQL, for row-level security.

    The database setting is transaction-local (`set_config(..., true)`), so a pooled or persistent
    connection never carries one tenant into the next transaction.
    """
    with tenant_scope(tenant), transaction.atomic(using=using):
        connection = connections[using]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('kahn.tenant_id', %s, true)", [str(tenant.pk)])
        yield tenant
