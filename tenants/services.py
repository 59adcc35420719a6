"""Writes of tenancy itself: tenants and who is in them."""

from __future__ import annotations

import re
import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from billing.models import Plan
from tenants.context import tenant_atomic
from tenants.models import KEY_PREFIX_ALPHABET, Membership, Role, Tenant


class TenancyError(ValueError):
    """A request the operator can fix (an unknown plan, a slug taken): one sentence."""


def tenant_key_prefix_for(slug: str) -> str:
    """A readable, unique key prefix: the slug's letters and digits, then 4 random characters.

    Readable so an operator who finds a leaked key knows whose it is; random so two slugs that
    differ only in punctuation still get different prefixes.
    """
    base = re.sub(r"[^a-z0-9]", "", slug.lower())[:12]
    while True:
        suffix = "".join(secrets.choice(KEY_PREFIX_ALPHABET) for _ in range(max(4, 6 - len(base))))
        prefix = base + suffix
        if not Tenant.objects.filter(key_prefix=prefix).exists():
            return prefix


def user_for_email(*, email: str) -> AbstractBaseUser:
    """The user with this email, or a new one who will be claimed at their first sign-in.

    A new user has no login identity yet: the first OIDC sign-in with this email, verified by the
    provider, binds the provider's `sub` to it (`tenants.auth`).
    """
    User = get_user_model()
    matches = list(User.objects.filter(email__iexact=email)[:2])
    if len(matches) > 1:
        raise TenancyError(f"more than one user has the email {email}")
    if matches:
        return matches[0]
    return User.objects.create_user(username=email.lower(), email=email)


@transaction.atomic
def tenant_create(
    *, slug: str, name: str = "", plan_slug: str | None = None, owner_email: str | None = None
) -> Tenant:
    if Tenant.objects.filter(slug=slug).exists():
        raise TenancyError(f"a tenant {slug!r} already exists")
    if plan_slug is None:
        plan = None
    else:
        try:
            plan = Plan.objects.get(slug=plan_slug)
        except Plan.DoesNotExist:
            known = ", ".join(Plan.objects.values_list("slug", flat=True)) or "none"
            raise TenancyError(f"there is no plan {plan_slug!r} (plans: {known})") from None
    tenant = Tenant(slug=slug, name=name or slug, key_prefix=tenant_key_prefix_for(slug))
    if plan is not None:
        tenant.plan = plan
    tenant.full_clean()
    tenant.save()
    if owner_email:
        membership_create(tenant=tenant, user=user_for_email(email=owner_email), role=Role.OWNER)
    return tenant


def membership_create(*, tenant: Tenant, user: AbstractBaseUser, role: str = Role.MEMBER) -> Membership:
    # A membership is the tenant's own row: written inside its binding, like any tenant data.
    with tenant_atomic(tenant):
        membership, _ = Membership.objects.update_or_create(tenant=tenant, user=user, defaults={"role": role})
    return membership
