"""Reads of tenancy itself: which tenants a user may act for, a tenant's members and API keys."""

from __future__ import annotations

from tenants.context import USER_SETTING, pre_tenant_lookup
from tenants.models import ApiKey, Membership, MembershipChange, Role, Tenant


class NotAMember(LookupError):
    """The user asked to act for a tenant they are not a member of (or that does not exist)."""

    def __init__(self, slug: str) -> None:
        super().__init__(f"You are not a member of the organization {slug!r}.")
        self.slug = slug


def membership_list_for_user(*, user_id: int) -> list[Membership]:
    """The user's memberships in every tenant, first one first, with their tenants.

    This runs before any tenant is chosen, so row-level security cannot key on the tenant: it goes
    through the membership table's read-only policy on `kahn.user_id`, set for this lookup alone.
    """
    with pre_tenant_lookup(USER_SETTING, str(user_id)):
        return list(Membership.objects.pre_tenant_of_user(user_id).select_related("tenant"))


def tenant_chosen_for_user(
    *, memberships: list[Membership], asked_slug: str | None, session_tenant_id: object
) -> Tenant | None:
    """The tenant a signed-in user acts for: the one asked for by slug (`X-Organization`), else
    the one the session chose, else the first membership; None for a user with no membership.

    Raises `NotAMember` when the asked tenant is not one of the user's, whether it exists or not.
    """
    if asked_slug is not None:
        for membership in memberships:
            if membership.tenant.slug == asked_slug:
                return membership.tenant
        raise NotAMember(asked_slug)
    for membership in memberships:
        if membership.tenant_id == session_tenant_id:
            return membership.tenant
    return memberships[0].tenant if memberships else None


def api_key_list(*, tenant: Tenant) -> list[ApiKey]:
    """Every key of the tenant, revoked ones too (keys are never deleted), newest first."""
    return list(ApiKey.objects.filter(tenant=tenant).select_related("created_by"))


def api_key_get(*, tenant: Tenant, key_id: int) -> ApiKey | None:
    """One key of the tenant; None for a key of another tenant, exactly as for no key at all."""
    return ApiKey.objects.filter(tenant=tenant, pk=key_id).select_related("tenant").first()


def membership_list(*, tenant: Tenant) -> list[Membership]:
    """The tenant's members, owners first, with their users and login identities (none yet: invited)."""
    order: dict[str, int] = {Role.OWNER: 0, Role.ADMIN: 1, Role.MEMBER: 2}
    memberships = Membership.objects.filter(tenant=tenant).select_related("user", "user__identity")
    return sorted(memberships, key=lambda m: (order.get(m.role, 3), m.created_at, m.pk))


def membership_get(*, tenant: Tenant, membership_id: int) -> Membership | None:
    """One membership of the tenant; None for another tenant's, exactly as for none at all."""
    return Membership.objects.filter(tenant=tenant, pk=membership_id).select_related("tenant", "user").first()


def membership_change_list(*, tenant: Tenant, limit: int = 50) -> list[MembershipChange]:
    """The tenant's latest changes to its members, newest first."""
    return list(MembershipChange.objects.filter(tenant=tenant)[:limit])
