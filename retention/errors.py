"""What the API answers for a run retention removed: `410 run_deleted` with its record.

The read API and the ingest API both ask here once a run is not found (or refuses a write), so a
producer and a reader get the same answer, with the same reason, for the same run.
"""

from __future__ import annotations

from kahn_site.api_errors import RunDeleted
from retention import selectors
from tenants.models import Tenant


def run_deleted_error(*, tenant: Tenant, run_id: str) -> RunDeleted | None:
    """The 410 for `run_id` if retention removed it (and nobody restored it), else None."""
    record = selectors.run_deletion(tenant=tenant, run_id=run_id)
    if record is None:
        return None
    plan = tenant.plan
    return RunDeleted(
        selectors.run_deletion_sentence(record, plan), details=selectors.run_deletion_details(record, plan)
    )
