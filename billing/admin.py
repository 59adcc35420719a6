from django.contrib import admin

from billing.models import Plan


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = (
        "slug",
        "name",
        "retention_days",
        "hard_delete_after_days",
        "ingest_requests_per_minute",
        "max_api_keys",
    )
    search_fields = ("slug", "name")
