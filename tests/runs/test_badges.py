"""Status badges (issue 19): made and revoked on the Badges page, served without sign-in at an
unguessable URL as SVG or shields.io's endpoint JSON, through the real pages and URLs."""

import re

import pytest
from django.db import connection

from runs.badges import badge_create, badge_token_hash
from runs.models import Badge
from tenants.context import tenant_scope
from tests.tenants.conftest import POSTGRES_ONLY, as_service, cloud

__all__ = ["as_service", "cloud"]

pytestmark = pytest.mark.django_db

RED, GREEN, AMBER, GREY = "#cf222e", "#1a7f37", "#9a6700", "#6e7781"


def make_badge(client, pattern: str) -> str:
    """Makes a badge on the Badges page; its URL, as the page shows it once."""
    response = client.post("/badges/", {"pattern": pattern})
    assert response.status_code == 200, response.content
    page = response.content.decode()
    assert "this is the only time it is shown" in page
    return re.search(r'id="new-badge" type="text" value="([^"]+)"', page).group(1)


def status_fill(svg: str) -> str:
    return re.search(r'<rect class="status" [^>]*fill="([^"]+)"', svg).group(1)


def served(client, url: str, **query) -> tuple[int, str]:
    response = client.get(url, query)
    return response.status_code, response.content.decode()


@pytest.mark.parametrize(
    ("pattern", "message", "colour"),
    [
        ("run_failed", "failed", RED),
        ("run_clean", "clean", GREEN),
        ("run_fl?ky", "flaky", AMBER),
        # The newest complete run of all: run_dirty (run_crashed, newer, never completed).
        ("run_*", "clean", GREEN),
        ("*_same_ts", "flaky", AMBER),
        # `_` and `-` are a run id's own characters, never wildcards.
        ("run-failed", "no runs", GREY),
        ("nightly-*", "no runs", GREY),
    ],
)
def test_a_badge_shows_the_latest_complete_matching_run_in_the_pages_colours(
    client, imported, pattern, message, colour
):
    url = make_badge(client, pattern)
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    assert response["Cache-Control"] == "max-age=60"
    svg = response.content.decode()
    assert f'aria-label="{pattern}: {message}"' in svg
    assert status_fill(svg) == colour

    response = client.get(url, {"format": "json"})
    assert response["Cache-Control"] == "max-age=60"
    assert response.json() == {
        "schemaVersion": 1,
        "label": pattern,
        "message": message,
        "color": colour.removeprefix("#"),
    }


def test_a_badge_follows_the_runs_as_they_complete(client, imported):
    from tests.conftest import ingest_quietly, write_archive_run

    url = make_badge(client, "nightly-*")
    assert "no runs" in served(client, url)[1]
    write_archive_run(
        imported,
        "nightly-1",
        [
            {"ts": "2026-12-01T00:00:00.000Z", "event": "run_start", "run_id": "nightly-1"},
            {"ts": "2026-12-01T00:00:01.000Z", "event": "run_end", "exit_code": 1},
        ],
    )
    ingest_quietly(imported)
    assert status_fill(served(client, url)[1]) == RED


def test_the_svg_holds_no_script_and_nothing_but_the_badge(client, imported):
    svg = served(client, make_badge(client, "run_*"))[1]
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
    assert "<script" not in svg.lower()
    assert not re.search(r"\son\w+=", svg)  # no event handlers
    assert "href" not in svg  # no links out


def test_only_a_hash_of_the_url_is_stored(client, imported, local_tenant):
    url = make_badge(client, "run_clean")
    token = url.rsplit("/", 1)[1]
    assert len(token) >= 43  # 32 random bytes
    with tenant_scope(local_tenant):
        badge = Badge.objects.get()
    assert badge.token_hash == badge_token_hash(token) != token
    # The page lists the badge but never shows its URL again.
    page = client.get("/badges/").content.decode()
    assert "run_clean" in page and token not in page


def test_a_revoked_badge_is_404_and_the_others_stay(client, imported, local_tenant):
    failed, clean = make_badge(client, "run_failed"), make_badge(client, "run_clean")
    with tenant_scope(local_tenant):
        badge = Badge.objects.get(pattern="run_failed")
    response = client.post(f"/badges/{badge.pk}/revoke/")
    assert response.status_code == 302
    assert served(client, failed)[0] == 404
    assert served(client, failed, format="json")[0] == 404
    assert served(client, clean)[0] == 200
    page = client.get("/badges/").content.decode()
    assert "revoked" in page
    # Revoking twice, or a badge that does not exist: nothing breaks.
    assert client.post(f"/badges/{badge.pk}/revoke/").status_code == 302
    assert client.post("/badges/999999/revoke/").status_code == 404


@pytest.mark.parametrize("pattern", ["run failed", "run_<b>", "a" * 65, "run/x", "", "run_[ab]"])
def test_a_bad_pattern_is_refused_saying_what_a_pattern_may_hold(client, imported, local_tenant, pattern):
    response = client.post("/badges/", {"pattern": pattern})
    assert response.status_code == 400
    page = response.content.decode()
    assert "Run id pattern:" in page
    assert "run_<b>" not in page  # shown escaped, if at all
    with tenant_scope(local_tenant):
        assert not Badge.objects.exists()


@pytest.mark.parametrize("token", ["nope", "x" * 43, "x" * 500])
def test_an_unknown_token_is_404(client, imported, token):
    assert client.get(f"/badge/{token}").status_code == 404


def test_a_bad_format_is_a_400(client, imported):
    url = make_badge(client, "run_clean")
    status, body = served(client, url, format="png")
    assert status == 400 and "svg" in body and "json" in body


def test_the_badges_page_is_in_the_oss_navigation(client, imported):
    assert 'href="/badges/"' in client.get("/").content.decode()


# ---------------------------------------------------------------- cloud mode


def test_in_cloud_owners_and_admins_make_badges_and_members_may_not(cloud, world_runs):
    cloud.force_login(world_runs.carol)  # a member of acme, her first workspace
    assert cloud.get("/badges/").status_code == 403
    assert cloud.post("/badges/", {"pattern": "*"}).status_code == 403
    assert 'href="/badges/"' not in cloud.get("/").content.decode()

    cloud.force_login(world_runs.alice)  # acme's owner
    assert 'href="/badges/"' in cloud.get("/").content.decode()
    url = make_badge(cloud, "*")
    cloud.logout()
    # Served to anyone: the URL is the credential. acme's runs only.
    status, svg = served(cloud, url)
    assert status == 200 and status_fill(svg) == GREEN
    assert cloud.get(url, {"format": "json"}).json()["message"] == "clean"


def test_in_cloud_another_tenants_badge_cannot_be_revoked(cloud, world_runs):
    _, token = badge_create(tenant=world_runs.globex, pattern="*")
    with tenant_scope(world_runs.globex):
        globex_badge = Badge.objects.get()
    cloud.force_login(world_runs.alice)
    assert cloud.post(f"/badges/{globex_badge.pk}/revoke/").status_code == 404
    cloud.logout()
    assert status_fill(served(cloud, f"/badge/{token}")[1]) == RED  # globex_nightly failed


@POSTGRES_ONLY[0]
@POSTGRES_ONLY[1]
def test_under_row_level_security_a_badge_is_found_by_its_hash_and_reads_its_tenants_runs(
    cloud, world_runs, as_service
):
    assert connection.vendor == "postgresql"
    _, acme_token = badge_create(tenant=world_runs.acme, pattern="*")
    _, globex_token = badge_create(tenant=world_runs.globex, pattern="*")
    assert cloud.get(f"/badge/{acme_token}", {"format": "json"}).json()["message"] == "clean"
    assert cloud.get(f"/badge/{globex_token}", {"format": "json"}).json()["message"] == "failed"
    assert cloud.get("/badge/" + "x" * 43).status_code == 404
