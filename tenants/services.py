"""Writes of tenancy itself: tenants, who is in them, and their API keys."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from billing.models import Plan
from kahn_site.live_fanout import SOCKET_UNAUTHENTICATED, credential_group_for_api_key, live_close_sockets
from tenants.context import tenant_atomic
from tenants.models import (
    KEY_PREFIX_ALPHABET,
    ApiKey,
    ApiKeyScope,
    Membership,
    MembershipChange,
    MembershipChangeAction,
    Role,
    Tenant,
)
from tenants.selectors import membership_list_for_user


class TenancyError(ValueError):
    """A request the operator can fix (an unknown plan, a slug taken): one sentence."""


class NotAllowed(TenancyError):
    """The person acting may not make this change (an admin touching an owner's membership)."""


class LastOwner(TenancyError):
    """The change would leave the tenant without an owner."""


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


def user_for_email(*, email: str) -> User:
    """The user with this email, or a new one who will be claimed at their first sign-in.

    A new user has no login identity yet: the first OIDC sign-in with this email, verified by the
    provider, binds the provider's `sub` to it (`tenants.oidc`). A user who has signed in holds a
    stored email only if their provider verified it (`tenants.oidc.verified_email`), so an address
    someone merely typed at their provider matches no one here.
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
        membership_invite(
            tenant=tenant, email=owner_email, role=Role.OWNER, by=None, actor="manage.py create_tenant"
        )
    return tenant


def user_claim_waiting_memberships(*, user: User, verified_email: str) -> None:
    """Memberships waiting for `verified_email` become `user`'s, who just signed in with it verified.

    They wait on a user made for the address who never signed in (`user_for_email`); a first
    sign-in takes that user over whole (`tenants.oidc`), but someone who had signed in before with
    no verified address (or, before this was checked, with one that was never verified) finds them
    here. Where both hold a membership of one tenant, the stronger role is kept.
    """
    User = get_user_model()
    waiting = (
        User.objects.filter(email__iexact=verified_email, identity__isnull=True)
        .exclude(pk=user.pk)
        # Staff rights are an operator's grant to one user: an address does not carry them across.
        .filter(is_staff=False, is_superuser=False)
    )
    strength: dict[str, int] = {Role.OWNER: 0, Role.ADMIN: 1, Role.MEMBER: 2}
    for placeholder in waiting:
        for membership in membership_list_for_user(user_id=placeholder.pk):
            with tenant_atomic(membership.tenant):
                mine = Membership.objects.filter(tenant=membership.tenant, user=user).first()
                if mine is None:
                    Membership.objects.filter(tenant=membership.tenant, pk=membership.pk).update(user=user)
                    continue
                if strength.get(membership.role, 3) < strength.get(mine.role, 3):
                    Membership.objects.filter(tenant=membership.tenant, pk=mine.pk).update(
                        role=membership.role
                    )
                Membership.objects.filter(tenant=membership.tenant, pk=membership.pk).delete()
        # Nothing of it is left in any tenant: it was only ever a name for the address.
        placeholder.delete()


def membership_create(*, tenant: Tenant, user: User, role: str = Role.MEMBER) -> Membership:
    # A membership is the tenant's own row: written inside its binding, like any tenant data.
    with tenant_atomic(tenant):
        membership, _ = Membership.objects.update_or_create(tenant=tenant, user=user, defaults={"role": role})
    return membership


# ---------------------------------------------------------------- members and roles (SPEC section 8)
#
# Owners and admins manage the members; only an owner may make or unmake an owner (an admin who
# could would make themselves one); a tenant always keeps at least one owner. `by` is the acting
# person's membership, None for an operator's command. Every change is recorded (`MembershipChange`)
# in the transaction that makes it.


def person_label(user: User) -> str:
    """How a person is named in the record: the email shows (if any is known), the id identifies."""
    return f"{getattr(user, 'email', '') or user.get_username()} (user {user.pk})"


def _check_may_manage(*, by: Membership | None, roles: Iterable[str]) -> None:
    if by is None:
        return
    if not by.manages_tenant:
        raise NotAllowed("only owners and admins manage the members")
    if by.role != Role.OWNER and Role.OWNER in roles:
        raise NotAllowed("only an owner may make someone an owner or change an owner's membership")


def _role_checked(role: str) -> str:
    if role not in Role.values:
        raise TenancyError(f"{role!r} is not a role (roles: {', '.join(Role.values)})")
    return role


def _owners_locked(tenant: Tenant) -> int:
    """The tenant's owner count, with the tenant locked: two owners leaving at once must not both
    find the other still there."""
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
    return Membership.objects.filter(tenant=tenant, role=Role.OWNER).count()


def _record(
    *, tenant: Tenant, actor: str, action: str, subject: str, from_role: str = "", to_role: str = ""
) -> None:
    MembershipChange.objects.create(
        tenant=tenant, actor=actor, action=action, subject=subject, from_role=from_role, to_role=to_role
    )


def membership_invite(
    *, tenant: Tenant, email: str, role: str, by: Membership | None, actor: str | None = None
) -> Membership:
    """Gives the person with this email a membership: a user who signed in with it verified gets
    it now; anyone else gets it at their first sign-in with it verified (`tenants.oidc`).

    `actor` names an operator's command; a person acting is named from `by`."""
    email = email.strip()
    try:
        validate_email(email)
    except ValidationError:
        raise TenancyError(f"{email!r} is not an email address") from None
    _check_may_manage(by=by, roles=[_role_checked(role)])
    with tenant_atomic(tenant):
        user = user_for_email(email=email)
        existing = Membership.objects.filter(tenant=tenant, user=user).first()
        if existing is not None:
            raise TenancyError(f"{email} is already in {tenant.slug}, as {existing.role}")
        membership = Membership.objects.create(tenant=tenant, user=user, role=role)
        _record(
            tenant=tenant,
            actor=actor or person_label(by.user),  # type: ignore[union-attr]
            action=MembershipChangeAction.INVITED,
            subject=person_label(user),
            to_role=role,
        )
    return membership


def membership_change_role(*, membership: Membership, role: str, by: Membership) -> Membership:
    """Changes a member's role; the tenant's last owner stays an owner."""
    _role_checked(role)
    tenant = membership.tenant
    with tenant_atomic(tenant):
        owners = _owners_locked(tenant)
        current = Membership.objects.select_related("user").get(tenant=tenant, pk=membership.pk)
        _check_may_manage(by=by, roles=[current.role, role])
        if current.role == role:
            return current
        if current.role == Role.OWNER and owners <= 1:
            raise LastOwner(
                f"{person_label(current.user)} is the last owner of {tenant.slug}: make another owner first"
            )
        Membership.objects.filter(tenant=tenant, pk=current.pk).update(role=role)
        _record(
            tenant=tenant,
            actor=person_label(by.user),
            action=MembershipChangeAction.ROLE_CHANGED,
            subject=person_label(current.user),
            from_role=current.role,
            to_role=role,
        )
        current.role = role
    return current


def membership_remove(*, membership: Membership, by: Membership) -> None:
    """Takes a person out of the tenant (their open sockets end at their next check); never the
    last owner."""
    tenant = membership.tenant
    with tenant_atomic(tenant):
        owners = _owners_locked(tenant)
        current = Membership.objects.select_related("user").filter(tenant=tenant, pk=membership.pk).first()
        if current is None:
            return  # already removed, by another request
        _check_may_manage(by=by, roles=[current.role])
        if current.role == Role.OWNER and owners <= 1:
            raise LastOwner(
                f"{person_label(current.user)} is the last owner of {tenant.slug}: make another owner first"
            )
        current.delete()
        _record(
            tenant=tenant,
            actor=person_label(by.user),
            action=MembershipChangeAction.REMOVED,
            subject=person_label(current.user),
            from_role=current.role,
        )


# ---------------------------------------------------------------- API keys (SPEC section 5)

API_KEY_PREFIX = "kahn_live_sk_"
API_KEY_PATTERN = re.compile(r"^kahn_live_sk_([a-z0-9]{6,16})_([A-Za-z0-9]{32,128})$")
API_KEY_SECRET_LENGTH = 40  # base62: about 238 bits
_BASE62 = string.ascii_letters + string.digits
# How stale `last_used_at` may get: writing it on every request would make each one a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def api_key_hash(key: str) -> str:
    """A keyed hash (HMAC-SHA256 with the server's pepper): a leaked table alone opens nothing."""
    return hmac.new(settings.KAHN_API_KEY_PEPPER.encode(), key.encode(), hashlib.sha256).hexdigest()


def api_key_create(
    *,
    tenant: Tenant,
    name: str,
    created_by: User | None = None,
    expires_at: datetime | None = None,
    scopes: Iterable[str] = (),
) -> tuple[ApiKey, str]:
    """A new key for `tenant`, and the key itself: returned here once, never stored.

    `scopes`: what the key may do (`ApiKeyScope`); none named means all of them."""
    name = name.strip()
    if not name:
        raise TenancyError("an API key needs a name, so its owners know what it is for")
    unknown = sorted(set(scopes) - set(ApiKeyScope.values))
    if unknown:
        raise TenancyError(
            f"an API key has no scope {', '.join(map(repr, unknown))} "
            f"(scopes: {', '.join(ApiKeyScope.values)})"
        )
    scopes_text = " ".join(sorted(set(scopes) or ApiKeyScope.values))
    with tenant_atomic(tenant):
        # Lock the tenant: two keys made at once must not both fit under the plan's limit.
        Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
        active = ApiKey.objects.filter(tenant=tenant, revoked_at__isnull=True).count()
        limit = tenant.plan.max_api_keys
        if active >= limit:
            raise TenancyError(
                f"{tenant.slug} has {active} active API keys, the most its plan {tenant.plan.name!r} allows; "
                "revoke one first"
            )
        secret = "".join(secrets.choice(_BASE62) for _ in range(API_KEY_SECRET_LENGTH))
        key = f"{API_KEY_PREFIX}{tenant.key_prefix}_{secret}"
        api_key = ApiKey.objects.create(
            tenant=tenant,
            name=name,
            key_hash=api_key_hash(key),
            last4=key[-4:],
            created_by=created_by,
            expires_at=expires_at,
            scopes=scopes_text,
        )
    return api_key, key


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revokes a key at once: its next request is refused, and its open sockets are closed."""
    with tenant_atomic(api_key.tenant):
        if api_key.revoked_at is None:
            api_key.revoked_at = timezone.now()
            ApiKey.objects.filter(tenant=api_key.tenant, pk=api_key.pk).update(revoked_at=api_key.revoked_at)
            transaction.on_commit(
                partial(
                    live_close_sockets,
                    credential_group_for_api_key(api_key.pk),
                    code=SOCKET_UNAUTHENTICATED,
                    reason="the API key was revoked",
                ),
                robust=True,
            )
    return api_key


def api_key_find(key: str, *, bind_tenant: bool = False) -> ApiKey | None:
    """The active key `key` is, with its tenant and plan; None for anything else (malformed,
    unknown, revoked, expired). The tenant comes from the stored key, never from the prefix text.
    Inside a request's transaction it adds no transaction of its own. `bind_tenant`: the read also
    binds an active key's tenant for row-level security (`ApiKeyManager.pre_tenant_by_hash`); the
    caller refuses the request at once if this says None."""
    if not API_KEY_PATTERN.match(key):
        return None
    key_hash = api_key_hash(key)
    now = timezone.now()  # one instant for the database's binding and this check
    api_key = ApiKey.objects.pre_tenant_by_hash(key_hash, bind_tenant=bind_tenant, now=now)
    # The lookup already matched the hash; compare again in constant time all the same.
    if api_key is None or not hmac.compare_digest(api_key.key_hash, key_hash):
        return None
    if not api_key.is_active_at(now):
        return None
    if not key.startswith(f"{API_KEY_PREFIX}{api_key.tenant.key_prefix}_"):
        return None
    return api_key


def api_key_mark_used(api_key: ApiKey) -> None:
    """Records that the key was used, at most once a minute: a write on every request would make
    each request a write."""
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at >= LAST_USED_RESOLUTION:
        with tenant_atomic(api_key.tenant):
            ApiKey.objects.filter(tenant=api_key.tenant, pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now


def api_key_authenticate(key: str) -> ApiKey | None:
    """`api_key_find`, and the use recorded: for a caller with no request transaction (a socket)."""
    api_key = api_key_find(key)
    if api_key is not None:
        api_key_mark_used(api_key)
    return api_key
