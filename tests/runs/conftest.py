"""Fixtures of the run tests: the cloud server of the live tests runs as the service role."""

from tests.tenants.conftest import service_role

__all__ = ["service_role"]
