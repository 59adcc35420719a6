"""The shared world of the suite: the sample archive, the producer tool, and the local tenant."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tenants.models import LOCAL_TENANT_SLUG, Tenant

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
SAMPLE_ARCHIVE = SHARED / "fixtures" / "archive"
ARCHIVE_TOOL = SHARED / "tools" / "kahn_archive.py"


def archive_tool(*args: str) -> None:
    """Runs the producer emulator (`../shared/tools/kahn_archive.py`), as a producer would run."""
    subprocess.run([sys.executable, str(ARCHIVE_TOOL), *args], check=True, capture_output=True)


@pytest.fixture
def local_tenant(db) -> Tenant:
    # Created by migration; a transactional test's flush removes it, so make it again if needed.
    tenant, _ = Tenant.objects.get_or_create(slug=LOCAL_TENANT_SLUG, defaults={"name": "Local"})
    return tenant


@pytest.fixture
def sample_archive(tmp_path: Path) -> Path:
    """A writable copy of the sample archive of SPEC section 3."""
    root = tmp_path / "archive"
    shutil.copytree(SAMPLE_ARCHIVE, root)
    return root


def manage_env(**extra: str) -> dict[str, str]:
    """The environment for a `manage.py` subprocess that works on this test's database."""
    import os

    from django.db import connection

    settings_dict = connection.settings_dict
    if connection.vendor == "sqlite":
        url = f"sqlite:///{settings_dict['NAME']}"
    else:
        host, port = settings_dict["HOST"] or "127.0.0.1", settings_dict["PORT"] or 5432
        user = settings_dict["USER"] or "postgres"
        url = f"postgres://{user}@{host}:{port}/{settings_dict['NAME']}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAHN_", "DJANGO_", "DATABASE_"))}
    return {**env, "DATABASE_URL": url, **extra}


def manage(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Runs `manage.py` as an operator would, against this test's database unless `env` says otherwise."""
    return subprocess.run(
        [sys.executable, str(PROJECT / "manage.py"), *args],
        env=env if env is not None else manage_env(),
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )
