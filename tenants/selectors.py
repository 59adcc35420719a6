"""Reads of tenancy itself: which tenants a user may act for."""

from __future__ import annotations

from tenants.context import USER_SETTING, pre_tenant_lookup
from tenants.models import Membership


def membership_list_for_user(*, user_id: int) -> list[Membership]:
    """The user's memberships in every tenant, first one first, with their tenants.

    This runs before any tenant is chosen, so row-level security cannot key on the tenant: it goes
    through the membership table's read-only policy on `kahn.user_id`, set for this lookup alone.
    """
    with pre_tenant_lookup(USER_SETTING, str(user_id)):
        return list(Membership.objects.pre_tenant_of_user(user_id).select_related("tenant"))
