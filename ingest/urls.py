from django.urls import path

from ingest import api

# Listed before the read API's routes: each view answers GET through the read API's view it
# extends, and adds the producer's POST or PUT.
api_urlpatterns = [
    path("runs/<str:run_id>/events", api.RunEventsEndpoint.as_view(), name="api-run-events"),
    path("runs/<str:run_id>/graph", api.RunGraphEndpoint.as_view(), name="api-run-graph"),
    path("runs/<str:run_id>/summary", api.RunSummaryEndpoint.as_view(), name="api-run-summary"),
]
