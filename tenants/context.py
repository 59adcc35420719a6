"""The current tenant: one ContextVar, set while a request, a socket's unit of work or a command
acts for one tenant, and cleared after.

Everything that reads or writes tenant data asks `tenant_current()`, which raises rather than
guess: scoping fails closed.

On PostgreSQL the tenant is also bound in the database, for row-level security: `kahn.tenant_id`
is set with `set_config(..., true)`, which lasts until the end of the transaction, so a pooled or
persistent connection never carries one tenant into the next transaction. A tenant is bound in
code and in the database together, in exactly these ways:

- a request: the tenant middlewares (`tenants.middleware`), through `request_transaction`, the
  whole request as one unit of work (`RequestTransaction.bind`);
- a socket: `tenants.sockets` decides its tenant once, at the handshake; each of the socket's reads
  is then a `tenant_atomic` unit of work;
- everything else (commands, tasks, imports, the staff path): `tenant_atomic`.

`tenant_scope` sets the tenant in code only: `RequestTransaction.bind` and `tenant_atomic` build on
it, and tests read with it where the database does not check (SQLite, or the migrating role).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction

from kahn_site.rows import bound_cursor

if TYPE_CHECKING:
    from tenants.models import Tenant

# The database settings that row-level security policies read (see `tenants.rls`).
TENANT_SETTING = "kahn.tenant_id"
USER_SETTING = "kahn.user_id"
API_KEY_HASH_SETTING = "kahn.api_key_hash"
API_KEY_ID_SETTING = "kahn.api_key_id"

_current_tenant: ContextVar[Tenant | None] = ContextVar("kahn_current_tenant", default=None)
# The tenant an enclosing `tenant_atomic` or request holds bound in the database, and on
# which connection, for as long as that block lasts.
_tenant_bound_in_database: ContextVar[tuple[int, Any] | None] = ContextVar("kahn_tenant_bound", default=None)
# The transaction block a request opened (`request_transaction`), while the request runs.
_request_block: ContextVar[Any] = ContextVar("kahn_request_block", default=None)


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
    with bound_cursor(using) as cursor:
        cursor.execute("SELECT set_config(%s, %s, true)", [name, value])
    yield
    # A block marked for rollback rolls its savepoint back, which restores the value by itself.
    if nested and value != restore and not connection.needs_rollback:
        with bound_cursor(using) as cursor:
            cursor.execute("SELECT set_config(%s, %s, true)", [name, restore])


@contextmanager
def _tenant_in_database(tenant: Tenant, outer: Tenant | None, using: str) -> Iterator[None]:
    """Binds `tenant` for row-level security while the block lasts, unless an enclosing block on
    the same connection already holds it bound: a request binds its tenant once, and the write
    path's unit of work inside it costs no second round trip. Inside the enclosing block's extent
    the binding cannot have changed: a nested block for another tenant sets it back on its way out.
    """
    connection = connections[using]
    if connection.vendor != "postgresql" or _tenant_bound_in_database.get() == (tenant.pk, connection):
        yield
        return
    restore = str(outer.pk) if outer is not None else ""
    with database_setting(TENANT_SETTING, str(tenant.pk), restore=restore, using=using):
        token = _tenant_bound_in_database.set((tenant.pk, connection))
        try:
            yield
        finally:
            _tenant_bound_in_database.reset(token)


@contextmanager
def tenant_atomic(tenant: Tenant, *, using: str = "default", savepoint: bool = True) -> Iterator[Tenant]:
    """A transaction acting for `tenant`, in code and, on PostgreSQL, for row-level security.

    Inside another transaction it is a savepoint, unless `savepoint=False`: then an error inside
    it fails the enclosing transaction too (a producer's request: one unit of work, all or nothing).
    """
    outer = tenant_current_or_none()
    with (
        tenant_scope(tenant),
        transaction.atomic(using=using, savepoint=savepoint),
        _tenant_in_database(tenant, outer, using),
    ):
        yield tenant


@dataclass(frozen=True)
class RequestTransaction:
    """A request's unit of work (`request_transaction`); `atomic`: whether it is a transaction."""

    atomic: bool
    using: str = "default"

    @contextmanager
    def bind(self, tenant: Tenant | None, *, bound_by_key_lookup: bool = False) -> Iterator[None]:
        """Acts for `tenant` for the rest of the request (or for no tenant yet): in code, and on
        PostgreSQL for row-level security. No savepoint of its own: a request pays for none.

        `bound_by_key_lookup`: the request's API key was read by the statement that also bound its
        tenant (`tenants.services.api_key_find(bind_tenant=True)`), so only the code learns of it
        here: a producer's request binds its tenant with no round trip of its own.
        """
        if tenant is None:
            yield
            return
        outer = tenant_current_or_none()
        binding = (
            _tenant_known_bound(tenant, self.using)
            if bound_by_key_lookup
            else _tenant_in_database(tenant, outer, self.using)
        )
        with tenant_scope(tenant), binding:
            yield


@contextmanager
def request_transaction(*, using: str = "default") -> Iterator[RequestTransaction]:
    """A whole request as one unit of work: on PostgreSQL one transaction (requests are atomic), in
    which the tenant is found and then bound (`RequestTransaction.bind`); on SQLite none, as there is
    no row-level security to bind, and a transaction per page would hold SQLite's one write lock
    while the page renders. For the tenant middlewares only.
    """
    if connections[using].vendor != "postgresql":
        yield RequestTransaction(atomic=False, using=using)
        return
    with transaction.atomic(using=using):
        token = _request_block.set(connections[using].atomic_blocks[-1])
        try:
            yield RequestTransaction(atomic=True, using=using)
        finally:
            _request_block.reset(token)


def directly_in_request_transaction(*, using: str = "default") -> bool:
    """Whether the innermost transaction block is a request's own (`request_transaction`): work done
    directly in it needs no savepoint, as an error answer rolls the whole request back."""
    blocks = connections[using].atomic_blocks
    return bool(blocks) and blocks[-1] is _request_block.get()


@contextmanager
def _tenant_known_bound(tenant: Tenant, using: str) -> Iterator[None]:
    token = _tenant_bound_in_database.set((tenant.pk, connections[using]))
    try:
        yield
    finally:
        _tenant_bound_in_database.reset(token)


@contextmanager
def pre_tenant_lookup(setting: str, value: str, *, using: str = "default") -> Iterator[None]:
    """The narrow path for reads made before the tenant is known (a user's memberships; a key by
    its id, for an operator): only `setting` is set, which the table's read-only lookup policy
    admits, and it is cleared after. Row-level security stays on; the tenant policy still sees
    nothing. (A producer's API key by its hash sets its setting just before the statement that
    reads it, in the same transaction: `ApiKeyManager.pre_tenant_by_hash`.)

    Inside a request's transaction it takes no savepoint of its own (a failed lookup fails the
    request); outside any, it is its own transaction.
    """
    if connections[using].vendor != "postgresql":
        yield
        return
    with (
        transaction.atomic(using=using, savepoint=False),
        database_setting(setting, value, restore="", using=using),
    ):
        yield
