"""The tenant's pages of retention: recent deletions, and what a deleted run's page says instead.

Both answer "why did my run vanish" for the people of the tenant, from the retention records,
which outlive the runs.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from retention import selectors
from retention.models import RetentionRecord
from tenants.context import tenant_current

RECORDS_PER_PAGE = 100


def retention_history(request: HttpRequest) -> HttpResponse:
    tenant = tenant_current()
    plan = tenant.plan
    try:
        before = int(request.GET["before"]) if "before" in request.GET else None
    except ValueError:
        before = None
    records = selectors.retention_records_recent(tenant=tenant, before_id=before, limit=RECORDS_PER_PAGE + 1)
    older = records[RECORDS_PER_PAGE].pk + 1 if len(records) > RECORDS_PER_PAGE else None
    records = records[:RECORDS_PER_PAGE]
    for record in records:
        record.restorable_until = selectors.restorable_until(record, plan)
    context = {
        "nav": "retention",
        "plan": plan,
        "terms": selectors.retention_terms(plan),
        "records": records,
        "older_than": older,
        "first_page": before is None,
    }
    return render(request, "retention/history.html", context)


def run_deleted_page(request: HttpRequest, record: RetentionRecord) -> HttpResponse:
    """What the run page shows for a run retention removed: 410 Gone, with the record."""
    plan = tenant_current().plan
    context = {
        "nav": "runs",
        "record": record,
        "restorable_until": selectors.restorable_until(record, plan),
        "terms": selectors.retention_terms(plan),
    }
    return render(request, "retention/run_deleted.html", context, status=410)
