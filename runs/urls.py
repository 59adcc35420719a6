from django.urls import path

from runs import api, views

api_urlpatterns = [
    path("runs/", api.RunListApi.as_view(), name="api-runs"),
    path("runs/<str:run_id>/", api.RunDetailApi.as_view(), name="api-run"),
    path("runs/<str:run_id>/events", api.RunEventsApi.as_view(), name="api-run-events"),
    path("runs/<str:run_id>/graph", api.RunGraphApi.as_view(), name="api-run-graph"),
    path("runs/<str:run_id>/summary", api.RunSummaryApi.as_view(), name="api-run-summary"),
]

page_urlpatterns = [
    path("", views.run_history, name="history"),
    path("runs/<str:run_id>/", views.run_page, name="run"),
    path("nodes/", views.node_index, name="nodes"),
    path("nodes/<path:node_id>/", views.node_page, name="node"),
]
