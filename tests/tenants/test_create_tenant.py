"""`manage.py create_tenant SLUG [--name N] [--plan P] [--owner EMAIL]` and the models it fills."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, transaction

from billing.models import Plan
from tenants.context import tenant_scope
from tenants.models import KEY_PREFIX_PATTERN, Membership, Tenant


def create_tenant(*args: str) -> str:
    out = StringIO()
    call_command("create_tenant", *args, stdout=out)
    return out.getvalue()


def test_a_tenant_gets_the_default_plan_and_a_readable_key_prefix(db):
    output = create_tenant("acme-corp", "--name", "Acme Corporation")
    tenant = Tenant.objects.get(slug="acme-corp")
    assert (tenant.name, tenant.plan.slug) == ("Acme Corporation", "default")
    assert re.fullmatch(r"acmecorp[a-z0-9]{4}", tenant.key_prefix)
    assert f"API key prefix {tenant.key_prefix}" in output
    # SPEC section 9's defaults.
    plan = tenant.plan
    assert (plan.retention_days, plan.hard_delete_after_days) == (90, 7)


def test_the_owner_is_made_and_becomes_the_owner(db):
    create_tenant("acme", "--owner", "Alice@Example.com")
    tenant = Tenant.objects.get(slug="acme")
    alice = get_user_model().objects.get(email__iexact="alice@example.com")
    assert not hasattr(alice, "identity")  # claimed at her first sign-in
    with tenant_scope(tenant):
        assert [(m.user, m.role) for m in Membership.objects.all()] == [(alice, "owner")]
    # An existing user (any case of the email) is reused, not duplicated.
    create_tenant("globex", "--owner", "alice@example.com")
    assert get_user_model().objects.filter(email__iexact="alice@example.com").count() == 1


def test_a_named_plan_is_used_and_an_unknown_one_is_refused_naming_the_plans(db):
    Plan.objects.create(slug="team", name="Team", retention_days=365)
    create_tenant("acme", "--plan", "team")
    assert Tenant.objects.get(slug="acme").plan.retention_days == 365
    with pytest.raises(CommandError, match=r"no plan 'gold' \(plans: default, team\)"):
        create_tenant("globex", "--plan", "gold")
    assert not Tenant.objects.filter(slug="globex").exists()


def test_a_taken_or_invalid_slug_is_refused(db):
    create_tenant("acme")
    with pytest.raises(CommandError, match="already exists"):
        create_tenant("acme")
    with pytest.raises(CommandError, match="slug"):
        create_tenant("not a slug")


def test_key_prefixes_are_validated_and_unique(db):
    assert re.fullmatch(KEY_PREFIX_PATTERN, Tenant.objects.create(slug="t1", name="T1").key_prefix)
    for bad in ("short", "UPPERCASE1", "has_underscore", "x" * 17):
        with pytest.raises(ValidationError):
            Tenant(slug="t2", name="T2", key_prefix=bad).full_clean()
    # The database holds the line too, whatever the code path.
    with pytest.raises(IntegrityError), transaction.atomic():
        Tenant.objects.create(slug="t3", name="T3", key_prefix="Bad_Prefix")
    taken = Tenant.objects.get(slug="t1").key_prefix
    with pytest.raises(IntegrityError), transaction.atomic():
        Tenant.objects.create(slug="t4", name="T4", key_prefix=taken)


def test_a_user_belongs_to_a_tenant_once(world):
    with pytest.raises(IntegrityError), transaction.atomic(), tenant_scope(world.acme):
        Membership.objects.create(tenant=world.acme, user=world.alice, role="member")
