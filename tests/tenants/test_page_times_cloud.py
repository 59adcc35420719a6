"""Cloud mode's own pages write times as every page does: labelled with their zone, and in the
reader's zone once the local-time toggle's cookie names one. Through the test client."""

import re
from datetime import UTC, datetime

from tenants.context import tenant_scope
from tenants.models import Membership
from tenants.services import api_key_create
from tests.tenants.conftest import POSTGRES_ONLY

pytestmark = POSTGRES_ONLY

TIME = re.compile(r'<time datetime="([^"]+)" title="([^"]+)">([^<]+)</time>')
# A winter instant of another year: the year is written, and Paris is on CET, UTC+1.
JOINED = datetime(2024, 1, 15, 8, 5, 9, tzinfo=UTC)


def test_the_members_and_keys_pages_write_times_in_utc_then_in_the_readers_zone(cloud, world):
    with tenant_scope(world.acme):
        Membership.objects.filter(tenant=world.acme).update(created_at=JOINED)
    api_key, _ = api_key_create(tenant=world.acme, name="nightly", expires_at=JOINED)
    cloud.force_login(world.alice)  # owner of acme
    members = cloud.get("/members/").text
    assert (
        "2024-01-15T08:05:09.000Z",
        "2024-01-15 08:05:09.000 UTC",
        "Jan 15, 2024, 08:05 UTC",
    ) in TIME.findall(members)
    assert "Times are UTC" not in members  # each time says so itself
    cloud.cookies["kahn_time_zone"] = "Europe/Paris"
    members = cloud.get("/members/").text
    assert (
        "2024-01-15T08:05:09.000Z",
        "2024-01-15 08:05:09.000 UTC",
        "Jan 15, 2024, 09:05 CET",
    ) in TIME.findall(members)
    keys = cloud.get("/keys/").text
    row = re.search(rf'<tr class="key-\w+" data-key-id="{api_key.pk}">.*?</tr>', keys, re.S).group(0)
    assert "Jan 15, 2024, 09:05 CET</time>" in row  # its expiry
    assert 'aria-pressed="true"' in keys
