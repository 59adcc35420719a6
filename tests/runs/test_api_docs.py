"""/api/docs/: the OpenAPI schema as a page (Swagger UI) from the project's own files, linked from
every page's header, and read with the read API's access in cloud mode."""

import re
from html.parser import HTMLParser

import pytest
from django.contrib.auth import get_user_model
from django.contrib.staticfiles import finders

from tenants.services import api_key_create
from tests.tenants.conftest import cloud as cloud  # the fixture, for this directory

pytestmark = pytest.mark.django_db

DOCS = "/api/docs/"
EXTERNAL = re.compile(r"""(?:https?:)?//[^/"'\s]""")


class References(HTMLParser):
    """Every URL a page makes the browser fetch or offers as a link."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def references(html: str) -> list[str]:
    parser = References()
    parser.feed(html)
    return parser.urls


def test_the_docs_page_references_only_this_site(client, local_tenant):
    response = client.get(DOCS)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    urls = references(response.text)
    assert urls, "the page loads Swagger UI"
    assert all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    assert not EXTERNAL.search(response.text)
    # No inline script or style: the site's Content Security Policy allows neither.
    assert "<style" not in response.text
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", response.text))
    for url in urls:
        if url.startswith("/static/"):
            assert finders.find(url.removeprefix("/static/")), f"{url} is not among the static files"
    assert {
        "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js",
        "/api/docs/?script=",
    } <= set(urls)


def test_the_docs_script_loads_this_sites_schema_and_calls_no_one_else(client, local_tenant):
    response = client.get(f"{DOCS}?script=")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/javascript")
    script = response.text
    assert 'url: "/api/v1/schema/"' in script
    assert '"validatorUrl": null' in script  # Swagger UI's default sends the schema to a public validator
    assert not EXTERNAL.search(script)


def test_the_schema_the_page_renders_has_the_apis_endpoints(client, local_tenant):
    schema = client.get("/api/v1/schema/?format=json").json()
    assert "/api/v1/runs/{run_id}/events" in schema["paths"]
    assert set(schema["paths"]["/api/v1/runs/{run_id}/events"]) == {"get", "post"}


def test_the_headers_api_link_goes_to_the_docs(client, local_tenant):
    html = client.get("/").text
    assert 'href="/api/docs/">API</a>' in html
    assert "format=json" not in html


def test_the_docs_answer_without_the_trailing_slash_too(client, local_tenant):
    assert client.get("/api/docs").status_code == 200


# ---------------------------------------------------------------- cloud: the read API's access


def test_cloud_sends_anonymous_people_to_sign_in_and_refuses_the_schema(cloud, world):
    response = cloud.get(DOCS)
    assert response.status_code == 302
    assert response["Location"] == "/oidc/authenticate/?next=%2Fapi%2Fdocs%2F"
    response = cloud.get("/api/v1/schema/?format=json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_cloud_shows_the_docs_to_a_member_and_to_an_api_key(cloud, world):
    cloud.force_login(world.alice)
    assert cloud.get(DOCS).status_code == 200
    assert cloud.get("/api/v1/schema/?format=json").status_code == 200
    cloud.logout()
    _, key = api_key_create(tenant=world.globex, name="reader")
    bearer = {"Authorization": f"Bearer {key}"}
    assert cloud.get(DOCS, headers=bearer).status_code == 200
    assert cloud.get(f"{DOCS}?script=", headers=bearer).status_code == 200
    assert "/api/v1/runs/" in cloud.get("/api/v1/schema/?format=json", headers=bearer).json()["paths"]


def test_cloud_refuses_a_bad_key_and_tells_a_person_with_no_workspace(cloud, world):
    response = cloud.get(DOCS, headers={"Authorization": "Bearer kahn_live_sk_nope_" + "x" * 32})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    dave = get_user_model().objects.create_user("dave", email="dave@example.com")
    cloud.force_login(dave)
    response = cloud.get(DOCS)
    assert "No workspace yet" in response.text
    assert "swagger-ui" not in response.text
    assert cloud.get("/api/v1/schema/?format=json").status_code == 403
