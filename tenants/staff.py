"""The staff path: the one explicit, audited way to act on a tenant's data from outside it.

Django admin and operator jobs (retention) are not requests of a tenant's member; they enter a tenant
here, which records who entered, which tenant and why (`StaffAccess`), then binds the tenant like
any other unit of work. Row-level security stays on: staff see one tenant at a time, never all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tenants.context import tenant_atomic
from tenants.models import StaffAccess, Tenant

logger = logging.getLogger(__name__)


def staff_actor(user: Any) -> str:
    """How a staff user is named in the record: the email shows, the id identifies."""
    return f"{user.email or user.get_username()} (user {user.pk})"


def staff_access_record(*, tenant: Tenant, actor: str, reason: str) -> StaffAccess:
    """Records an entry into a tenant. For a job that then works in many short transactions of
    its own (retention, in bounded batches), each bound with `tenant_atomic`; otherwise use
    `staff_tenant_access`, which records and binds in one."""
    access = StaffAccess.objects.create(
        actor=actor, tenant_ref=tenant.pk, tenant_slug=tenant.slug, reason=reason
    )
    logger.info("staff access: %s in tenant %s: %s", actor, tenant.slug, reason)
    return access


@contextmanager
def staff_tenant_access(*, tenant: Tenant, actor: str, reason: str) -> Iterator[Tenant]:
    staff_access_record(tenant=tenant, actor=actor, reason=reason)
    with tenant_atomic(tenant):
        yield tenant
