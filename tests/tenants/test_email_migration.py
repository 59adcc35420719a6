"""The upgrade that forgets addresses no provider was known to verify (tenants 0006): users who signed
in before it lose the claim their stored email gave them; users made for an address and waiting for
their first sign-in keep it. Run as an operator runs it, `manage.py migrate`."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection

from tenants.context import tenant_scope
from tenants.database_roles import database_grant_service_role
from tenants.models import Identity, Membership, Tenant
from tests.tenants.conftest import service_role_name

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE, AFTER = "0005_api_keys", "0006_members_and_key_scopes"


def migrate(target: str) -> None:
    call_command("migrate", "tenants", target, stdout=StringIO(), stderr=StringIO())


def grant_service_role_again() -> None:
    """Going back and forth made the tables of 0006 anew: the suite's service role, if one was made,
    gets its privileges on them again, as `manage.py migrate` gives them in cloud mode."""
    if connection.vendor != "postgresql":
        return
    role = service_role_name()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        exists = cursor.fetchone() is not None
    if exists:
        database_grant_service_role(connection, role)


def test_signed_in_users_lose_their_stored_email_and_waiting_users_keep_theirs():
    User = get_user_model()
    migrate(BEFORE)
    try:
        # Signed in before the upgrade: their provider may or may not have verified the address.
        impostor = User.objects.create_user(username="oidc_impostor", email="carol@initech.example")
        Identity.objects.create(user=impostor, sub="impostor-sub")
        no_email = User.objects.create_user(username="oidc_quiet", email="")
        Identity.objects.create(user=no_email, sub="quiet-sub")
        # Made by an operator for an address, not signed in yet: the slot waits for a verified sign-in.
        waiting = User.objects.create_user(username="dave@acme.example", email="dave@acme.example")
    finally:
        migrate(AFTER)
        grant_service_role_again()

    assert User.objects.get(pk=impostor.pk).email == ""
    assert User.objects.get(pk=no_email.pk).email == ""
    assert User.objects.get(pk=waiting.pk).email == "dave@acme.example"

    # The operator now names carol the owner: the slot waits for carol, not for the impostor.
    call_command("create_tenant", "initech", "--owner", "carol@initech.example", stdout=StringIO())
    initech = Tenant.objects.get(slug="initech")
    with tenant_scope(initech):
        owner = Membership.objects.select_related("user").get(tenant=initech).user
    assert owner != impostor and not Identity.objects.filter(user=owner).exists()
    assert owner.email == "carol@initech.example"
