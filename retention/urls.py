from django.urls import path

from retention import views

page_urlpatterns = [
    path("retention/", views.retention_history, name="retention"),
]
