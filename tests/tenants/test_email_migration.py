"""The upgrade that forgets addresses no provider was known to verify (tenants 0006): users who signed
in before it lose the claim their stored email gave them; users made for an address and waiting for
their first sign-in keep it. Run as an operator runs it, `manage.py migrate`."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from tenants.context import tenant_scope
from tenants.models import Identity, Membership, Tenant

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE, AFTER = "0005_api_keys", "0006_members_and_key_scopes"


def migrate(target: str) -> None:
    call_command("migrate", "tenants", target, stdout=StringIO(), stderr=StringIO())


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
