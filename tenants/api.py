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
from tenants.permissions import HasScope, HasTenant


class TenantAPIView(APIView):
    permission_classes = [HasTenant, HasScope]
    tenant: Tenant

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for needed in (HasTenant, HasScope):
            if needed not in cls.permission_classes:
                # Extra permissions are welcome; dropping one of these would open the view to no
                # tenant, or to any API key.
                raise TypeError(f"{cls.__name__}.permission_classes must keep {needed.__name__}")

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.tenant = tenant_current()
