"""Tenants, the people in them, their API keys, and the record of staff acting across them."""

import secrets
import string
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import connection, models, transaction
from django.db.models import Q
from django.utils import timezone

from billing.models import Plan, plan_default_id
from kahn_site.rows import bound_cursor, columns
from tenants.context import API_KEY_HASH_SETTING, TENANT_SETTING
from tenants.scoping import TenantScopedManager

# The one tenant of OSS mode, created by migration: every OSS run belongs to it.
LOCAL_TENANT_SLUG = "local"

# The tenant's part of its API keys: `kahn_live_sk_<key_prefix>_<secret>` (SPEC section 5).
KEY_PREFIX_PATTERN = r"^[a-z0-9]{6,16}$"
KEY_PREFIX_ALPHABET = string.ascii_lowercase + string.digits


def key_prefix_random() -> str:
    """A fresh prefix for a tenant made without one (admin, tests); 36^10 makes collisions moot."""
    return "".join(secrets.choice(KEY_PREFIX_ALPHABET) for _ in range(10))


class Tenant(models.Model):
    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=200)
    key_prefix = models.CharField(
        max_length=16,
        unique=True,
        default=key_prefix_random,
        validators=[RegexValidator(KEY_PREFIX_PATTERN, "6 to 16 lowercase letters and digits.")],
        help_text="public: names the tenant in its API keys (kahn_live_sk_<prefix>_<secret>)",
    )
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="tenants", default=plan_default_id)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.CheckConstraint(
                condition=Q(key_prefix__regex=KEY_PREFIX_PATTERN), name="tenant_key_prefix_format"
            )
        ]

    def __str__(self) -> str:
        return self.slug


class Role(models.TextChoices):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class MembershipManager(TenantScopedManager["Membership"]):
    def pre_tenant_of_user(self, user_id: int) -> models.QuerySet["Membership"]:
        """A user's memberships in every tenant, read before any tenant is chosen.

        The one narrow pre-tenant path: `tenants.selectors.membership_list_for_user` calls it inside
        a transaction that sets `kahn.user_id`, which the table's second, read-only policy admits.
        """
        return self.unscoped().filter(user_id=user_id)


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now)

    objects = MembershipManager()

    # Not a column: set by the Members page (tenants.views), false for a person invited by email
    # who has not signed in yet.
    signed_in: bool

    class Meta:
        # The first membership is the default tenant of a user with no other choice.
        ordering = ["created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["user", "tenant"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant_id} as {self.role}"

    @property
    def manages_tenant(self) -> bool:
        """Owners and admins change the workspace itself (its API keys, its members); members read
        its runs."""
        return self.role in (Role.OWNER, Role.ADMIN)


class MembershipChangeAction(models.TextChoices):
    INVITED = "invited", "invited"
    ROLE_CHANGED = "role_changed", "changed the role of"
    REMOVED = "removed", "removed"


class MembershipChange(models.Model):
    """One change to who is in a tenant, kept for its owners: who did what to whom, and when.

    Names are kept as text, as they were at the time: the record outlives the people in it.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="membership_changes")
    at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=300, help_text="who made the change: a user, or a command")
    action = models.CharField(max_length=20, choices=MembershipChangeAction.choices)
    subject = models.CharField(max_length=300, help_text="whose membership changed")
    from_role = models.CharField(max_length=10, choices=Role.choices, blank=True)
    to_role = models.CharField(max_length=10, choices=Role.choices, blank=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.actor}: {self.action} {self.subject} in {self.tenant_id}"


class Identity(models.Model):
    """The login provider's `sub` for a user: the key a login is matched by (the email only shows)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="identity")
    sub = models.CharField(max_length=255, unique=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "identities"

    def __str__(self) -> str:
        return self.sub


class StaffAccess(models.Model):
    """One use of the staff path: who acted in which tenant, and why.

    Deliberately no foreign key to the tenant: the record outlives the tenant, and it is not
    tenant-owned data, so staff can read it without entering the tenant.
    """

    at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=200, help_text="a user (email and id) or a command")
    tenant_ref = models.BigIntegerField(help_text="the tenant's id")
    tenant_slug = models.SlugField(max_length=50)
    reason = models.CharField(max_length=300)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "staff accesses"

    def __str__(self) -> str:
        return f"{self.actor} in {self.tenant_slug}: {self.reason}"


class ApiKeyScope(models.TextChoices):
    """What a key may do (SPEC section 8): write runs, or read the read API and `/ws/live`."""

    INGEST = "ingest", "ingest: send runs"
    READ = "read", "read: the read API and live updates"


# Stored as one space-separated, sorted word list, as OAuth writes scopes; a key has at least one.
API_KEY_SCOPES_ALL = " ".join(sorted(ApiKeyScope.values))
API_KEY_SCOPES_STORED = ["ingest", "read", "ingest read"]


class ApiKeyManager(TenantScopedManager["ApiKey"]):
    def pre_tenant_by_hash(
        self, key_hash: str, *, bind_tenant: bool = False, now: datetime | None = None
    ) -> "ApiKey | None":
        """The key with this hash, with its tenant and the tenant's plan, read before the tenant is
        known; None if there is none.

        The one narrow pre-tenant path for keys (`tenants.services.api_key_find`): on PostgreSQL it
        sets `kahn.api_key_hash`, which the table's read-only policy admits, then reads. The setting
        lasts as long as the caller's transaction (a request's), where it admits that one key, the
        request's own; with no transaction open, the two statements get one of their own.

        `bind_tenant`: the read also binds the key's tenant for row-level security, for the rest of
        the transaction, if the key is neither revoked nor expired at `now` (else it binds none): a
        producer's request acts for its key's tenant, and binding it costs no round trip of its own.
        The caller judges the key by the same `now`, so the two never disagree.

        Every producer's request makes this read, so both statements are hand-written
        (`kahn_site.rows`) and bound on the server: PostgreSQL plans each once per connection. They
        travel together (psycopg's pipeline mode): the read cannot start before the setting, but
        PostgreSQL runs them in order, so the client need not wait for the one to send the other.
        """
        key, tenant, plan = columns(ApiKey, "k"), columns(Tenant, "t"), columns(Plan, "p")
        postgresql = connection.vendor == "postgresql"
        bind = postgresql and bind_tenant
        # In the select list: evaluated only for the row the lookup policy let through.
        binding = (
            "set_config(%s, CASE WHEN k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > %s) "
            "THEN k.tenant_id::text ELSE '' END, true), "
            if bind
            else ""
        )
        select = (
            f"SELECT {binding}{key.sql}, {tenant.sql}, {plan.sql} FROM {ApiKey._meta.db_table} k "
            f"JOIN {Tenant._meta.db_table} t ON t.id = k.tenant_id "
            f"JOIN {Plan._meta.db_table} p ON p.id = t.plan_id WHERE k.key_hash = %s"
        )
        params: list[Any] = [TENANT_SETTING, now or timezone.now(), key_hash] if bind else [key_hash]
        if not postgresql:
            with connection.cursor() as cursor:
                cursor.execute(select, params)
                row = cursor.fetchone()
        else:
            with transaction.atomic(savepoint=False), bound_cursor() as cursor:
                # One round trip for both, and for the BEGIN psycopg sends ahead of them.
                with cursor.connection.pipeline():
                    cursor.execute("SELECT set_config(%s, %s, true)", [API_KEY_HASH_SETTING, key_hash])
                    cursor.execute(select, params)
                row = cursor.fetchone()
        if row is not None and bind:
            row = row[1:]
        if row is None:
            return None
        api_key = key.instance(row)
        api_key.tenant = tenant.instance(row, key.width)
        api_key.tenant.plan = plan.instance(row, key.width + tenant.width)
        return api_key

    def pre_tenant_by_id(self, key_id: int) -> models.QuerySet["ApiKey"]:
        """For an operator revoking a key by id: read through the `kahn.api_key_id` lookup policy."""
        return self.unscoped().filter(pk=key_id).select_related("tenant")


class ApiKey(models.Model):
    """A producer's key, `kahn_live_sk_<tenant key_prefix>_<secret>` (SPEC section 5).

    Only a keyed hash of the whole key and its last four characters are stored: the key itself is
    shown once, when it is made. Keys are never deleted, only revoked, so the list keeps who had one.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    key_hash = models.CharField(
        max_length=64, unique=True, help_text="HMAC-SHA256 of the key, with the pepper"
    )
    last4 = models.CharField(max_length=4)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True, help_text="written at most once a minute")
    revoked_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="for rotation with overlap")
    scopes = models.CharField(
        max_length=32,
        default=API_KEY_SCOPES_ALL,
        help_text="what the key may do, space-separated: ingest, read",
    )

    objects = ApiKeyManager()

    # Not a column: set by the API keys page (tenants.views) for the time it shows them at.
    state: str  # active, expired or revoked

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(scopes__in=API_KEY_SCOPES_STORED), name="api_key_scopes_known")
        ]

    def __str__(self) -> str:
        return f"{self.name} (…{self.last4})"

    def is_active_at(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def allows(self, scope: str) -> bool:
        return scope in self.scopes.split()
