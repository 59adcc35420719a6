from ingest import api
from kahn_site.api_routes import api_path

# Listed before the read API's routes: each view answers GET through the read API's view it
# extends, and adds the producer's POST or PUT. Each path also answers with a trailing slash.
api_urlpatterns = [
    *api_path("runs/<str:run_id>/events", api.RunEventsEndpoint, "api-run-events"),
    *api_path("runs/<str:run_id>/graph", api.RunGraphEndpoint, "api-run-graph"),
    *api_path("runs/<str:run_id>/summary", api.RunSummaryEndpoint, "api-run-summary"),
]
