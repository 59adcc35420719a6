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


@contextmanager
def staff_tenant_access(*, tenant: Tenant, actor: str, reason: str) -> Iterator[Tenant]:
    StaffAccess.objects.create(actor=actor, tenant_ref=tenant.pk, tenant_slug=tenant.slug, reason=reason)
    logger.info("staff access: %s in tenant %s: %s", actor, tenant.slug, reason)
    with tenant_atomic(tenant):
        yield tenant
