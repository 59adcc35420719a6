"""The base of every API view over tenant data: it refuses to run without a current tenant.

The tenant comes from the request (the session user's choice, or later an API key), never from the
body or the URL. A view built on `TenantAPIView` finds it in `self.tenant`, already checked; with
none, DRF answers 401/403 before the handler runs, so a view cannot forget the check. (`HasTenant`
is also every DRF view's default permission; this class keeps it even where a view lists its own.)
"""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.views import APIView

from tenants.context import tenant_current
from tenants.models import Tenant
from tenants.permissions import HasTenant


class TenantAPIView(APIView):
    permission_classes = [HasTenant]
    tenant: Tenant

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if HasTenant not in cls.permission_classes:
            # Extra permissions are welcome; dropping this one would open the view to no tenant.
            raise TypeError(f"{cls.__name__}.permission_classes must keep HasTenant")

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.tenant = tenant_current()
