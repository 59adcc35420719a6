"""Fixtures of the run tests: the cloud server of the live tests runs as the service role, and pages
are read in cloud mode in process (`cloud`)."""

from tests.tenants.conftest import cloud, service_role

__all__ = ["cloud", "service_role"]
