"""Behind a TLS proxy (`KAHN_TLS_PROXY=1`, SPEC section 8), as real servers answer: https answers
carry HSTS, the session and CSRF cookies are `Secure`, and the proxy's X-Forwarded-Proto is trusted;
without the setting none of it, and the header is ignored. Every answer carries the Content
Security Policy."""

from __future__ import annotations

from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.test import Client

from tests.conftest import manage, manage_env, scope_server
from tests.kahn_site.policy import EXPECTED_POLICY, policy_directives
from tests.tenants.conftest import POSTGRES_ONLY, cloud_server_env
from tests.tenants.conftest import service_role as service_role  # the fixture, for this directory

A_YEAR = 365 * 24 * 3600
HTTPS = {"X-Forwarded-Proto": "https"}


def get(url: str, **headers: str) -> requests.Response:
    return requests.get(url, headers=headers, allow_redirects=False, timeout=10)


def cookies_set(response: requests.Response) -> dict[str, SimpleCookie]:
    """Each cookie the answer sets, with its attributes, by name."""
    cookies = {}
    for header in response.raw.headers.getlist("Set-Cookie"):
        cookie = SimpleCookie(header)
        cookies.update({name: morsel for name, morsel in cookie.items()})
    return cookies


# ---------------------------------------------------------------- OSS: HSTS and the policy


@pytest.mark.database_agnostic
@pytest.mark.parametrize(
    ("env", "hsts"),
    [
        ({"KAHN_TLS_PROXY": "1"}, f"max-age={A_YEAR}"),
        ({"KAHN_TLS_PROXY": "true", "KAHN_HSTS_SECONDS": "300"}, "max-age=300"),
        ({"KAHN_TLS_PROXY": "0"}, None),
        ({}, None),
    ],
)
def test_https_answers_carry_hsts_only_behind_the_tls_proxy(transactional_db, imported, env, hsts):
    with scope_server(manage_env(**env), "--no-follow") as url:
        for path in ("/", "/nodes/", "/runs/run_failed/", "/api/v1/runs/", "/no/such/page/"):
            forwarded = get(f"{url}{path}", **HTTPS)
            assert forwarded.headers.get("Strict-Transport-Security") == hsts, path
            # Plain HTTP (the proxy's health checks, or no proxy at all) never pins a browser to https.
            plain = get(f"{url}{path}")
            assert "Strict-Transport-Security" not in plain.headers, path
            for answer in (forwarded, plain):
                policy = policy_directives(answer.headers["Content-Security-Policy"])
                assert policy == EXPECTED_POLICY, path


@pytest.mark.parametrize(
    ("name", "value", "sentence"),
    [
        ("KAHN_TLS_PROXY", "ture", "KAHN_TLS_PROXY must be 1 or 0 (true or false), not 'ture'."),
        ("KAHN_TLS_PROXY", "2", "KAHN_TLS_PROXY must be 1 or 0 (true or false), not '2'."),
        ("KAHN_HSTS_SECONDS", "a year", "KAHN_HSTS_SECONDS must be a whole number of seconds, not 'a year'."),
        ("KAHN_HSTS_SECONDS", "-1", "KAHN_HSTS_SECONDS must be a whole number of seconds, not '-1'."),
    ],
)
def test_a_mistyped_setting_is_refused_with_a_sentence_naming_it(name, value, sentence):
    result = manage("check", env=manage_env(**{"KAHN_TLS_PROXY": "1", name: value}))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"kahn: {sentence}"


# ---------------------------------------------------------------- cloud: Secure cookies


def signed_in_cookie(user) -> str:
    client = Client()
    client.force_login(user, backend="tenants.oidc.TenantOIDCBackend")
    return client.cookies["sessionid"].value


@pytest.fixture
def alice_session(world) -> str:
    return signed_in_cookie(world.alice)


def cloud_answers(url: str, session: str, **headers: str) -> tuple[requests.Response, requests.Response]:
    """A sign-in's start (which sets the session cookie) and the keys page (which sets the CSRF
    cookie, for its forms)."""
    sign_in = get(f"{url}/oidc/authenticate/", **headers)
    keys = get(f"{url}/keys/", Cookie=f"sessionid={session}", **headers)
    assert sign_in.status_code == 302 and keys.status_code == 200, (sign_in.text, keys.text)
    return sign_in, keys


def redirect_uri(sign_in: requests.Response) -> str:
    return parse_qs(urlsplit(sign_in.headers["Location"]).query)["redirect_uri"][0]


@pytest.mark.django_db(transaction=True)
@POSTGRES_ONLY[0]
@POSTGRES_ONLY[1]
def test_behind_the_tls_proxy_the_cookies_are_secure_and_https_is_pinned(service_role, alice_session):
    with scope_server(cloud_server_env(service_role, KAHN_TLS_PROXY="1"), "--host", "127.0.0.1") as url:
        host = urlsplit(url).netloc
        sign_in, keys = cloud_answers(url, alice_session, **HTTPS)
        session, csrf = cookies_set(sign_in)["sessionid"], cookies_set(keys)["csrftoken"]
        assert session["secure"] and session["httponly"]
        assert csrf["secure"]
        # The provider sends the browser back over https, as the proxy serves it.
        assert redirect_uri(sign_in) == f"https://{host}/oidc/callback/"
        assert sign_in.headers["Strict-Transport-Security"] == f"max-age={A_YEAR}"
        assert keys.headers["Strict-Transport-Security"] == f"max-age={A_YEAR}"

        # A form posted through the proxy passes the CSRF check: the browser's https Origin is
        # the site's own once the proxy's word is taken.
        token = csrf.value
        switched = requests.post(
            f"{url}/workspaces/switch/",
            data={"tenant": "acme", "next": "/", "csrfmiddlewaretoken": token},
            headers={
                **HTTPS,
                "Origin": f"https://{host}",
                "Cookie": f"sessionid={alice_session}; csrftoken={token}",
            },
            allow_redirects=False,
            timeout=10,
        )
        assert switched.status_code == 302, switched.text
        # The same form from a page served over plain http is another origin: refused.
        refused = requests.post(
            f"{url}/workspaces/switch/",
            data={"tenant": "acme", "next": "/", "csrfmiddlewaretoken": token},
            headers={
                **HTTPS,
                "Origin": f"http://{host}",
                "Cookie": f"sessionid={alice_session}; csrftoken={token}",
            },
            allow_redirects=False,
            timeout=10,
        )
        assert refused.status_code == 403


@pytest.mark.django_db(transaction=True)
@POSTGRES_ONLY[0]
@POSTGRES_ONLY[1]
def test_without_the_tls_proxy_setting_the_forwarded_header_changes_nothing(service_role, alice_session):
    with scope_server(cloud_server_env(service_role), "--host", "127.0.0.1") as url:
        host = urlsplit(url).netloc
        sign_in, keys = cloud_answers(url, alice_session, **HTTPS)
        session, csrf = cookies_set(sign_in)["sessionid"], cookies_set(keys)["csrftoken"]
        assert not session["secure"] and session["httponly"]
        assert not csrf["secure"]
        assert redirect_uri(sign_in) == f"http://{host}/oidc/callback/"
        assert "Strict-Transport-Security" not in sign_in.headers
        assert "Strict-Transport-Security" not in keys.headers
