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
