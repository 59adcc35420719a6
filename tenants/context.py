"""The current tenant: one ContextVar, set for a request, a socket or a task, and cleared after.

Everything that reads or writes tenant data asks `tenant_current()`, which raises rather than
guess: scoping fails closed.

On PostgreSQL the tenant is also bound in the database, for row-level security: `kahn.tenant_id`
is set with `set_config(..., true)`, which lasts until the end of the transaction, so a pooled or
persistent connection never carries one tenant into the next transaction. Code that reads or writes
tenant data therefore runs inside a transaction that set it: `tenant_atomic` for a unit of work,
`tenant_request` for a whole request (the tenant middlewares), `tenant_task` for a Celery task.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import connections, transaction

if TYPE_CHECKING:
    from tenants.models import Tenant

# The database settings that row-level security policies read (see `tenants.rls`).
TENANT_SETTING = "kahn.tenant_id"
USER_SETTING = "kahn.user_id"
API_KEY_HASH_SETTING = "kahn.api_key_hash"
API_KEY_ID_SETTING = "kahn.api_key_id"

_current_tenant: ContextVar[Tenant | None] = ContextVar("kahn_current_tenant", default=None)

R = TypeVar("R")


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
    """The tenant in code only. Database reads under row-level security also need `tenant_atomic`."""
    token = _current_tenant.set(tenant)
    try:
        yield tenant
    finally:
        _current_tenant.reset(token)


@contextmanager
def database_setting(name: str, value: str, *, restore: str, using: str = "default") -> Iterator[None]:
    """Sets a row-level security setting for the rest of the current transaction (PostgreSQL only).

    Inside an enclosing transaction the value would outlive this block (a released savepoint keeps
    it), so on the way out it is set back to `restore`; after an error, rolling back the savepoint
    restores it by itself.
    """
    connection = connections[using]
    if connection.vendor != "postgresql":
        yield
        return
    if not connection.in_atomic_block:
        raise RuntimeError(f"{name} is transaction-local: set it inside transaction.atomic()")
    nested = len(connection.atomic_blocks) > 1
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config(%s, %s, true)", [name, value])
    yield
    # A block marked for rollback rolls its savepoint back, which restores the value by itself.
    if nested and value != restore and not connection.needs_rollback:
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config(%s, %s, true)", [name, restore])


@contextmanager
def tenant_atomic(tenant: Tenant, *, using: str = "default") -> Iterator[Tenant]:
    """A transaction acting for `tenant`, in code and, on PostgreSQL, for row-level security."""
    outer = tenant_current_or_none()
    with tenant_scope(tenant), transaction.atomic(using=using):
        restore = str(outer.pk) if outer is not None else ""
        with database_setting(TENANT_SETTING, str(tenant.pk), restore=restore, using=using):
            yield tenant


@contextmanager
def tenant_request(tenant: Tenant | None, *, using: str = "default") -> Iterator[bool]:
    """A whole request acting for `tenant` (or for no tenant yet): what the tenant middlewares use.

    On PostgreSQL the request is one transaction (requests are atomic), bound to the tenant for
    row-level security. On SQLite the ContextVar alone: there is no row-level security to bind, and
    a transaction per page would hold SQLite's one write lock while the page renders. Yields
    whether it opened a transaction.
    """
    if connections[using].vendor != "postgresql":
        with tenant_scope(tenant) if tenant is not None else nullcontext():
            yield False
        return
    with tenant_atomic(tenant, using=using) if tenant is not None else transaction.atomic(using=using):
        yield True


@contextmanager
def pre_tenant_lookup(setting: str, value: str, *, using: str = "default") -> Iterator[None]:
    """The one narrow path for reads made before the tenant is known (a user's memberships; an API
    key by its hash): a transaction in which only `setting` is set, which the table's read-only
    lookup policy admits. Row-level security stays on; the tenant policy still sees nothing.
    """
    if connections[using].vendor != "postgresql":
        yield
        return
    with transaction.atomic(using=using), database_setting(setting, value, restore="", using=using):
        yield


def tenant_task(func: Callable[..., R]) -> Callable[..., R]:
    """For a Celery task acting for one tenant: call it with `tenant_id=`; it receives `tenant=`.

    The task runs as one `tenant_atomic` unit of work and the tenant is cleared afterwards, so the
    worker's next task starts with none: a task that forgets this decorator sees no tenant data.
    """

    @functools.wraps(func)
    def run_for_tenant(*args: Any, tenant_id: int, **kwargs: Any) -> R:
        from tenants.models import Tenant

        tenant = Tenant.objects.get(pk=tenant_id)
        with tenant_atomic(tenant):
            return func(*args, tenant=tenant, **kwargs)

    return run_for_tenant
