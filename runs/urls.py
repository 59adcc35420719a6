from django.templatetags.static import static
from django.urls import path, register_converter
from django.urls.converters import PathConverter
from django.views.generic import RedirectView

from kahn_site.api_routes import api_path
from runs import api, consumers, views


class NodeIdConverter(PathConverter):
    """Any node id, line breaks included: the schema refuses control characters in node ids now,
    but a database may hold ones stored before, and their links must still resolve."""

    regex = "(?s:.+)"


register_converter(NodeIdConverter, "node_id")

# GET runs/{id}/events, graph and summary are routed by `ingest.urls`: its views extend the read
# API's (`RunEventsApi`, `RunGraphApi`, `RunSummaryApi`) with the producer's POST and PUT. Each
# path also answers without its trailing slash (kahn_site.api_routes).
api_urlpatterns = [
    *api_path("runs/", api.RunListApi, "api-runs"),
    *api_path("metrics", api.TenantMetricsApi, "api-metrics"),
    # One spelling only, and before a run's: `runs/export/` is the page of a run named "export".
    path("runs/export", api.RunExportApi.as_view(), name="api-runs-export"),
    *api_path("runs/<str:run_id>/archive", api.RunArchiveApi, "api-run-archive"),
    *api_path("runs/<str:run_id>/", api.RunDetailApi, "api-run"),
]

page_urlpatterns = [
    path("", views.run_history, name="history"),
    path("runs/<str:run_id>/", views.run_page, name="run"),
    path("runs/<str:run_id>/compare/<str:other_id>/", views.run_compare_page, name="run-compare"),
    path("runs/<str:run_id>/nodes/<node_id:node_id>/", views.run_node_page, name="run-node"),
    path("nodes/", views.node_index, name="nodes"),
    path("nodes/<node_id:node_id>/", views.node_page, name="node"),
    path("badges/", views.badge_list, name="badges"),
    path("badges/<int:badge_id>/revoke/", views.badge_revoke, name="badge_revoke"),
    # Served without sign-in: the token in the path is the badge's only credential.
    path("badge/<str:token>", views.badge_serve, name="badge"),
    # Browsers ask for it beside any document that names no icon (a badge's SVG, the API's JSON).
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
]

# /ws/live: live events and rows (SPEC section 7), routed by kahn_site.asgi.
websocket_urlpatterns = [
    # A consumer where Django's stubs expect a view: channels routes with Django's `path`.
    path("ws/live", consumers.LiveConsumer.as_asgi(), name="ws-live"),  # type: ignore[arg-type]
]
