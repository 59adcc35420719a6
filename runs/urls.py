from django.urls import path

from runs import api, views

api_urlpatterns = [
    path("runs/", api.RunListApi.as_view(), name="api-runs"),
    path("runs/<str:run_id>/", api.RunDetailApi.as_view(), name="api-run"),
    # runs/<run_id>/events, graph and summary: routed by ingest.urls, whose views extend the read
    # views of runs.api with the producer's POST and PUT.
]

page_urlpatterns = [
    path("", views.run_history, name="history"),
    path("runs/<str:run_id>/", views.run_page, name="run"),
    path("nodes/", views.node_index, name="nodes"),
    path("nodes/<path:node_id>/", views.node_page, name="node"),
]
