"""The staff-access audit as the service does its work, as the service role on real PostgreSQL
(SPEC section 8): the staff path adds records and reads them; no change or deletion of one goes
through, by the ORM or by SQL, and the record stays as it was written."""

from __future__ import annotations

import pytest
from django.db import ProgrammingError, connection

from tenants.models import StaffAccess
from tenants.staff import staff_access_record
from tests.tenants.conftest import POSTGRES_ONLY

pytestmark = POSTGRES_ONLY

DENIED = "permission denied for table tenants_staffaccess"


@pytest.fixture
def record(world, as_service) -> StaffAccess:
    return staff_access_record(
        tenant=world.acme, actor="ops@example.com (user 7)", reason="admin: tenant page"
    )


def assert_unchanged(record: StaffAccess) -> None:
    stored = StaffAccess.objects.values_list("actor", "tenant_slug", "reason")
    assert list(stored) == [("ops@example.com (user 7)", "acme", "admin: tenant page")]


def test_the_service_role_adds_records_and_reads_them(world, record):
    staff_access_record(tenant=world.globex, actor="retention", reason="retention: soft delete")
    assert [(r.actor, r.tenant_slug) for r in StaffAccess.objects.order_by("id")] == [
        ("ops@example.com (user 7)", "acme"),
        ("retention", "globex"),
    ]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE tenants_staffaccess SET reason = 'nothing to see'",
        "UPDATE tenants_staffaccess SET at = now() - interval '1 year'",
        "DELETE FROM tenants_staffaccess",
        "TRUNCATE tenants_staffaccess",
    ],
)
def test_the_service_role_cannot_rewrite_a_record_by_sql(record, statement):
    with pytest.raises(ProgrammingError, match=DENIED), connection.cursor() as cursor:
        cursor.execute(statement)
    assert_unchanged(record)


def test_the_service_role_cannot_rewrite_a_record_by_the_orm(record):
    with pytest.raises(ProgrammingError, match=DENIED):
        StaffAccess.objects.filter(pk=record.pk).update(reason="nothing to see")
    record.reason = "nothing to see"
    with pytest.raises(ProgrammingError, match=DENIED):
        record.save()
    with pytest.raises(ProgrammingError, match=DENIED):
        StaffAccess.objects.filter(pk=record.pk).delete()
    assert_unchanged(record)
