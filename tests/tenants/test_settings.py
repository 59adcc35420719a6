"""Cloud mode refuses to start without a required setting, in one sentence that names it."""

from __future__ import annotations

import pytest

from tests.conftest import manage, manage_env

CLOUD_ENV = {
    "KAHN_MODE": "cloud",
    "DJANGO_SECRET_KEY": "settings-tests-" + "x" * 40,
    "DATABASE_URL": "postgres://kahn_service@127.0.0.1:5432/kahn",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "OIDC_RP_CLIENT_ID": "kahn-scope",
    "OIDC_RP_CLIENT_SECRET": "secret",
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "https://airlock.example/authorize",
    "OIDC_OP_TOKEN_ENDPOINT": "https://airlock.example/token",
    "OIDC_OP_USER_ENDPOINT": "https://airlock.example/userinfo",
    "OIDC_OP_JWKS_ENDPOINT": "https://airlock.example/jwks",
}


def check(env: dict[str, str]):
    # `check` loads settings, apps and URLs, and connects to nothing.
    base = {k: v for k, v in manage_env().items() if k != "DATABASE_URL"}
    return manage("check", env={**base, **env})


def test_cloud_mode_with_every_setting_starts():
    result = check(CLOUD_ENV)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "missing",
    [
        "REDIS_URL",
        "OIDC_RP_CLIENT_ID",
        "OIDC_RP_CLIENT_SECRET",
        "OIDC_OP_AUTHORIZATION_ENDPOINT",
        "OIDC_OP_TOKEN_ENDPOINT",
        "OIDC_OP_USER_ENDPOINT",
        "OIDC_OP_JWKS_ENDPOINT",
    ],
)
def test_cloud_mode_without_a_setting_exits_with_the_sentence_naming_it(missing):
    result = check({k: v for k, v in CLOUD_ENV.items() if k != missing})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"kahn: {missing} is not set: ") and last.endswith(".")


def test_cloud_mode_refuses_sqlite():
    result = check({**CLOUD_ENV, "DATABASE_URL": "sqlite:////tmp/scope.sqlite3"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "kahn: DATABASE_URL must be a postgres:// URL in cloud mode: row-level security keeps tenants apart."
    )
