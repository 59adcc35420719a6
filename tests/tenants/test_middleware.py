"""Cloud mode's choice of tenant for each request, through the real pages and API (in process).

The tenant comes from the `X-Organization` header, then the session's choice, then the first
membership; a tenant the user is not a member of is 403; another tenant's run is 404.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from tenants.middleware import SESSION_TENANT_KEY
from tenants.services import membership_create


def runs_shown(response) -> set[str]:
    return {name for name in ("acme_nightly", "globex_nightly") if name in response.text}


def test_a_member_sees_the_history_of_their_tenant(cloud, world_runs):
    cloud.force_login(world_runs.alice)
    response = cloud.get("/")
    assert response.status_code == 200
    assert runs_shown(response) == {"acme_nightly"}


def test_a_user_of_tenant_a_gets_404_for_the_run_page_and_api_row_of_b(cloud, world_runs):
    cloud.force_login(world_runs.alice)
    assert cloud.get("/runs/acme_nightly/").status_code == 200
    assert cloud.get("/runs/globex_nightly/").status_code == 404
    response = cloud.get("/api/v1/runs/globex_nightly/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "run_not_found"
    for path in ("events", "graph", "summary"):
        assert cloud.get(f"/api/v1/runs/globex_nightly/{path}").status_code == 404, path
    assert [row["run_id"] for row in cloud.get("/api/v1/runs/").json()["results"]] == ["acme_nightly"]


@pytest.mark.parametrize("path", ["/", "/api/v1/runs/"])
@pytest.mark.parametrize("organization", ["globex", "no-such-org"])
def test_x_organization_naming_a_tenant_the_user_is_not_in_is_403(cloud, world_runs, path, organization):
    # The same answer whether the tenant exists or not: the header cannot probe for tenants.
    cloud.force_login(world_runs.alice)
    response = cloud.get(path, headers={"X-Organization": organization})
    assert response.status_code == 403
    assert "globex_nightly" not in response.text
    if path.startswith("/api/"):
        assert response.json()["error"]["code"] == "permission_denied"


def test_x_organization_chooses_among_the_users_tenants_over_the_session(cloud, world_runs):
    carol = world_runs.carol
    cloud.force_login(carol)
    assert runs_shown(cloud.get("/")) == {"acme_nightly"}  # the first membership
    assert runs_shown(cloud.get("/", headers={"X-Organization": "globex"})) == {"globex_nightly"}
    cloud.post("/workspaces/switch/", {"tenant": "globex"})
    assert runs_shown(cloud.get("/")) == {"globex_nightly"}  # the session's choice
    assert runs_shown(cloud.get("/", headers={"X-Organization": "acme"})) == {"acme_nightly"}


def test_switching_to_a_tenant_the_user_is_not_in_is_refused(cloud, world_runs):
    cloud.force_login(world_runs.bob)
    response = cloud.post("/workspaces/switch/", {"tenant": "acme"})
    assert response.status_code == 403
    assert SESSION_TENANT_KEY not in cloud.session
    assert runs_shown(cloud.get("/")) == {"globex_nightly"}


def test_a_session_choice_the_user_lost_falls_back_to_the_first_membership(cloud, world_runs):
    carol = world_runs.carol
    cloud.force_login(carol)
    cloud.post("/workspaces/switch/", {"tenant": "globex"})
    from tenants.context import tenant_atomic
    from tenants.models import Membership

    with tenant_atomic(world_runs.globex):
        Membership.objects.filter(user=carol).delete()
    assert runs_shown(cloud.get("/")) == {"acme_nightly"}


def test_switching_goes_back_to_the_page_asked_for_and_only_on_this_site(cloud, world_runs):
    cloud.force_login(world_runs.carol)
    back = cloud.post("/workspaces/switch/", {"tenant": "globex", "next": "/nodes/"})
    assert (back.status_code, back["Location"]) == (302, "/nodes/")
    away = cloud.post("/workspaces/switch/", {"tenant": "acme", "next": "https://evil.example/"})
    assert away["Location"] == "/"


def test_the_header_shows_a_switcher_only_to_people_in_several_tenants(cloud, world_runs):
    cloud.force_login(world_runs.carol)
    page = cloud.get("/").text
    assert 'id="workspace-switcher"' in page
    assert '<option value="acme" selected>Acme</option>' in page
    assert '<option value="globex">Globex</option>' in page
    assert "Sign out" in page

    cloud.force_login(world_runs.alice)
    page = cloud.get("/").text
    assert 'id="workspace-switcher"' not in page
    assert "Acme" in page and "Sign out" in page


def test_the_workspaces_page_lists_the_users_tenants(cloud, world_runs):
    cloud.force_login(world_runs.carol)
    page = cloud.get("/workspaces/").text
    assert "Acme" in page and "Globex" in page
    assert "Switch to Globex" in page and "Switch to Acme" not in page  # acme is current


def test_a_signed_in_user_with_no_membership_sees_no_workspace_yet(cloud, world_runs):
    dave = get_user_model().objects.create_user("dave", email="dave@example.com")
    cloud.force_login(dave)
    for path in ("/", "/runs/acme_nightly/", "/workspaces/"):
        response = cloud.get(path)
        assert response.status_code == 200, path
        assert "No workspace yet" in response.text
        assert runs_shown(response) == set()
    response = cloud.get("/api/v1/runs/")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    # Once an owner adds dave, the same page shows the tenant's runs.
    membership_create(tenant=world_runs.globex, user=dave)
    assert runs_shown(cloud.get("/")) == {"globex_nightly"}


def test_anonymous_pages_go_to_sign_in_and_the_api_refuses(cloud, world_runs):
    response = cloud.get("/runs/acme_nightly/?at=3")
    assert response.status_code == 302
    assert response["Location"] == "/oidc/authenticate/?next=%2Fruns%2Facme_nightly%2F%3Fat%3D3"
    # No tenant, no API: 401 with the challenge a client can answer with an API key.
    response = cloud.get("/api/v1/runs/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "not_authenticated"
    assert "acme_nightly" not in response.text


def test_sign_out_is_a_post(cloud, world_runs):
    cloud.force_login(world_runs.alice)
    assert cloud.get("/oidc/logout/").status_code == 405
    assert cloud.get("/").status_code == 200
    response = cloud.post("/oidc/logout/")
    assert (response.status_code, response["Location"]) == (302, "/signed-out/")
    assert "Signed out" in cloud.get("/signed-out/").text
    assert cloud.get("/").status_code == 302


def test_the_admin_signs_staff_in_through_oidc(cloud, world):
    response = cloud.get("/admin/login/?next=/admin/")
    assert (response.status_code, response["Location"]) == (302, "/oidc/authenticate/?next=%2Fadmin%2F")
    # Signed in but not staff: a page that says so, not a loop back through the provider.
    cloud.force_login(world.alice)
    response = cloud.get("/admin/login/?next=/admin/")
    assert response.status_code == 403
    assert "Staff only" in response.text
