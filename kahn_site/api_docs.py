"""`/api/docs/`: the OpenAPI schema as a page people read (Swagger UI), from the project's own files.

Swagger UI comes from drf-spectacular-sidecar and is served as static files like the rest of the
site: no CDN, so the page works offline and under a Content Security Policy that trusts only this
origin. Its start-up script is a separate request (drf-spectacular's split view), never inline.

Access is the read API's (SPEC section 6): open in OSS; in cloud, a browser session or an API key
with a current tenant. A person who is not signed in is sent to sign in first, as on every page.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from drf_spectacular.views import SpectacularSwaggerSplitView
from rest_framework import exceptions


class ApiDocsView(SpectacularSwaggerSplitView):
    template_name = "api_docs.html"
    url_name = "api-schema"

    # Any HttpResponse, which DRF passes on as it is (its stubs say a DRF Response).
    def handle_exception(self, exc: Exception) -> HttpResponse:  # type: ignore[override]
        refused = isinstance(exc, exceptions.NotAuthenticated | exceptions.PermissionDenied)
        if refused and settings.CLOUD and getattr(self.request._request, "api_key", None) is None:
            if not self.request.user.is_authenticated:
                login = reverse("oidc_authentication_init")
                return HttpResponseRedirect(f"{login}?{urlencode({'next': self.request.get_full_path()})}")
            return render(self.request._request, "tenants/no_workspace.html")
        return super().handle_exception(exc)
