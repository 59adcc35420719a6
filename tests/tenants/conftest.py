"""Fixtures of the tenancy tests: cloud settings in process, the service role, and the environment
of a cloud-mode server in a subprocess (tests.conftest.scope_server)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.apps import apps
from django.conf import settings as django_settings
from django.db import connection, connections
from django.db.models import Model
from django.test import Client

from tests.conftest import manage_env

# For modules that need PostgreSQL: deselected by `-m "not postgres"`, and skipped if run on SQLite.
POSTGRES_ONLY = [
    pytest.mark.postgres,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (row-level security)"),
]

# Settings of cloud mode that Django reads at request time. Endpoints are never called in process:
# the sign-in itself is tested end to end, against a real provider (test_oidc.py).
CLOUD_SETTINGS = {
    "CLOUD": True,
    "ROOT_URLCONF": "tests.tenants.cloud_urls",
    "AUTHENTICATION_BACKENDS": ["tenants.oidc.TenantOIDCBackend"],
    "LOGIN_URL": "oidc_authentication_init",
    "LOGIN_REDIRECT_URL": "/",
    "LOGOUT_REDIRECT_URL": "signed_out",
    "OIDC_RP_CLIENT_ID": "kahn-scope",
    "OIDC_RP_CLIENT_SECRET": "not-used-in-process",
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "http://127.0.0.1:9/authorize",
    "OIDC_OP_TOKEN_ENDPOINT": "http://127.0.0.1:9/token",
    "OIDC_OP_USER_ENDPOINT": "http://127.0.0.1:9/userinfo",
    "OIDC_OP_JWKS_ENDPOINT": "http://127.0.0.1:9/jwks",
    "OIDC_RP_SIGN_ALGO": "RS256",
}


@pytest.fixture
def cloud(settings) -> Client:
    """A client of this process's Django with cloud mode's middleware, URLs and sign-in."""
    # kahn_site.urls adds cloud's URLs to its own list when it is first imported in cloud mode:
    # import it in OSS mode first, or they would stay in every later OSS test's URLs.
    import kahn_site.urls  # noqa: F401

    for name, value in CLOUD_SETTINGS.items():
        setattr(settings, name, value)
    settings.MIDDLEWARE = [
        "tenants.middleware.CloudTenantMiddleware" if m == "tenants.middleware.LocalTenantMiddleware" else m
        for m in settings.MIDDLEWARE
    ]
    return Client()


def service_role_name() -> str:
    # Roles are shared by every database of the server: one per test database, made idempotently.
    return f"{connection.settings_dict['NAME']}_service"[:63]


@pytest.fixture(scope="session")
def service_role(django_db_setup, django_db_blocker) -> str:
    """The service role of SPEC section 8 on the test database: no superuser, no BYPASSRLS, owns nothing.

    The tables belong to the role the suite migrates as; the role gets its privileges from the same
    function `manage.py migrate` uses in cloud mode.
    """
    from tenants.database_roles import database_grant_service_role

    with django_db_blocker.unblock():
        if connection.vendor != "postgresql":
            pytest.skip("row-level security is PostgreSQL's")
        name = service_role_name()
        with connection.cursor() as cursor:
            role = connection.ops.quote_name(name)
            cursor.execute(
                "DO $$ BEGIN"
                f" CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;"
                " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            )
        database_grant_service_role(connection, name)
    return name


@contextmanager
def connected_as(role: str) -> Iterator[None]:
    """Every connection of this process, in every thread, connects as `role` until the block ends."""
    default = connections["default"]
    default.close()
    # The settings dict is shared by the connections of all threads: new ones connect as `role`.
    original = default.settings_dict["USER"]
    default.settings_dict["USER"] = role
    try:
        yield
    finally:
        default.close()
        default.settings_dict["USER"] = original


@pytest.fixture
def as_service(service_role, transactional_db) -> Iterator[str]:
    """The test's database work runs as the service role, in autocommit like the service.

    Data made before this fixture (by the migrating role) is committed and visible to it, as far
    as row-level security allows; the flush after the test runs as the migrating role again.
    """
    with connected_as(service_role):
        yield service_role


def cloud_server_env(service_role: str, **extra: str) -> dict[str, str]:
    """The environment of a cloud-mode `manage.py serve` on the test database, as the service role.

    Its secret key and pepper are this process's, so a session made here (`force_login`) and an API
    key made here are good there too. The OIDC endpoints lead nowhere unless a test names a provider.
    """
    db = connection.settings_dict
    database = f"postgres://{service_role}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    cloud = {
        "KAHN_MODE": "cloud",
        "DATABASE_URL": database,
        "DJANGO_SECRET_KEY": django_settings.SECRET_KEY,
        "KAHN_API_KEY_PEPPER": django_settings.KAHN_API_KEY_PEPPER,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "REDIS_URL": "redis://127.0.0.1:6379/15",
        "OIDC_RP_CLIENT_ID": "kahn-scope",
        "OIDC_RP_CLIENT_SECRET": "kahn-scope-secret",
        "OIDC_OP_AUTHORIZATION_ENDPOINT": "http://127.0.0.1:9/authorize",
        "OIDC_OP_TOKEN_ENDPOINT": "http://127.0.0.1:9/token",
        "OIDC_OP_USER_ENDPOINT": "http://127.0.0.1:9/userinfo",
        "OIDC_OP_JWKS_ENDPOINT": "http://127.0.0.1:9/jwks",
    }
    return manage_env(**{**cloud, **extra})


def database_dump() -> str:
    """The whole test database as an operator's dump would hold it."""
    if connection.vendor == "sqlite":
        return "\n".join(connection.connection.iterdump())
    settings = connection.settings_dict
    host, user = settings["HOST"] or "127.0.0.1", settings["USER"] or "postgres"
    command = ["pg_dump", "--data-only", "-h", host, "-U", user, settings["NAME"]]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "COPY public.tenants_apikey" in result.stdout  # the dump did reach the keys
    return result.stdout


def tenant_owned_models() -> list[type[Model]]:
    """Every model with a foreign key to the tenant: found by enumeration, not from a list to extend."""
    from tenants.models import Tenant

    return [
        model
        for model in apps.get_models()
        if any(field.many_to_one and field.related_model is Tenant for field in model._meta.concrete_fields)
    ]
