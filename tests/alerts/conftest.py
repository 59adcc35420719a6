from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from tests.tenants.conftest import cloud as tenants_cloud
from tests.tenants.conftest import service_role  # noqa: F401  (the fixture, for this directory)

# Cloud mode stores no channel without KAHN_ENCRYPTION_KEY: the in-process cloud fixture, with one.
CLOUD_ENCRYPTION_KEY = Fernet.generate_key().decode()


@pytest.fixture
def cloud(settings):
    settings.KAHN_ENCRYPTION_KEY = CLOUD_ENCRYPTION_KEY
    return tenants_cloud.__wrapped__(settings)
