from django.apps import AppConfig


class AlertsConfig(AppConfig):
    # A room inside runs (it reads runs' rows and the write path fills its outbox), with its own
    # tables and migrations.
    name = "runs.alerts"
    label = "alerts"
    default_auto_field = "django.db.models.BigAutoField"
