"""DRF's default permission (settings.REST_FRAMEWORK): no API view runs without a current tenant.

Its own module, as DRF imports its default permissions while `rest_framework.views` loads.
"""

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from tenants.context import tenant_current_or_none


class HasTenant(BasePermission):
    message = "Sign in as a member of an organization, or send an API key."

    def has_permission(self, request: Request, view: Any) -> bool:
        return tenant_current_or_none() is not None
