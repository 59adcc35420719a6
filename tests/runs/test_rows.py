"""Hand-written row reads (`kahn_site.rows`) make the same instances as the ORM."""

import pytest
from django.db import connection

from kahn_site.rows import columns
from runs.models import Run
from tests.conftest import run_record

pytestmark = pytest.mark.django_db


def test_a_run_read_by_hand_equals_the_orms_json_and_times_included(local_tenant):
    run_record(local_tenant, "read_by_hand")
    # A producer's summary may hold an integer past 64 bits: jsonb keeps it exactly, and so must
    # the hand-written read (orjson, for one, would give back a float).
    summary = {"exit_code": 0, "artifacts": [{"bytes": 2**70 + 1, "name": "big"}], "note": "ünïcode"}
    Run.objects.filter(run_id="read_by_hand").update(summary=summary)
    by_orm = Run.objects.get(run_id="read_by_hand")

    run = columns(Run, "r")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {run.sql} FROM runs_run r WHERE r.run_id = %s", ["read_by_hand"])
        by_hand = run.instance(cursor.fetchone())

    fields = [f.attname for f in Run._meta.concrete_fields]
    assert {f: getattr(by_hand, f) for f in fields} == {f: getattr(by_orm, f) for f in fields}
    big = by_hand.summary["artifacts"][0]["bytes"]
    assert type(big) is int and big == 2**70 + 1
    assert by_hand.graph == {"version": 1, "nodes": [{"id": "build", "deps": []}]}
    assert by_hand.reduction_state == by_orm.reduction_state is not None
