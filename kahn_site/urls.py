from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from ingest.urls import api_urlpatterns as ingest_api_urlpatterns
from kahn_site.api_docs import ApiDocsView
from kahn_site.api_routes import api_path
from retention.urls import page_urlpatterns as retention_page_urlpatterns
from runs.alerts.urls import api_urlpatterns as alerts_api_urlpatterns
from runs.alerts.urls import page_urlpatterns as alerts_page_urlpatterns
from runs.urls import api_urlpatterns, page_urlpatterns

urlpatterns = [
    path("admin/", admin.site.urls),
    *api_path("api/v1/schema/", SpectacularAPIView, "api-schema"),
    *api_path("api/docs/", ApiDocsView, "api-docs"),
    path("api/v1/", include(ingest_api_urlpatterns)),
    path("api/v1/", include(api_urlpatterns)),
    path("api/v1/", include(alerts_api_urlpatterns)),
    path("", include(alerts_page_urlpatterns)),
    path("", include(retention_page_urlpatterns)),
    path("", include(page_urlpatterns)),
]

# API paths answer errors in the JSON shape of SPEC section 11; pages get HTML.
handler404 = "kahn_site.api_errors.not_found_handler"
handler500 = "kahn_site.api_errors.server_error_handler"

if settings.CLOUD:
    # Sign-in (OIDC), the workspace pages, and the admin's sign-in through OIDC; first, so that
    # the admin's own login page is never reached.
    urlpatterns.insert(0, path("", include("tenants.urls")))
