from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from tenants.context import tenant_scope
from tenants.models import LOCAL_TENANT_SLUG, Tenant


class LocalTenantMiddleware:
    """OSS mode: one operator on loopback, so every request acts for the one `local` tenant."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        tenant = Tenant.objects.get(slug=LOCAL_TENANT_SLUG)
        request.tenant = tenant
        with tenant_scope(tenant):
            return self.get_response(request)
