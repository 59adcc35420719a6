"""Plans in Django admin (SPEC section 9): list, edit, and which tenants are on each; and on each
tenant's page, its usage against its plan.

Plans are not tenant data: staff see and edit them without entering a tenant. A change applies to
each tenant's next request (rate limits, keys) and the next retention run, which read the plan then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from billing.models import Plan
from billing.selectors import tenant_usage
from tenants.admin import tenant_page_panel
from tenants.models import Tenant

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations


class TenantCount(TypedDict):
    """What `PlanAdmin.get_queryset` adds to each plan."""

    tenant_count: int


# Tenants named on a plan's page; the rest are one click away, in the tenant list filtered by plan.
TENANTS_SHOWN = 50


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = (
        "slug",
        "name",
        "retention_days",
        "hard_delete_after_days",
        "ingest_requests_per_minute",
        "max_api_keys",
        "tenant_count",
    )
    search_fields = ("slug", "name")
    readonly_fields = ("tenants_on_plan",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Plan]:
        return super().get_queryset(request).annotate(tenant_count=Count("tenants"))

    @admin.display(description="tenants", ordering="tenant_count")
    def tenant_count(self, plan: WithAnnotations[Plan, TenantCount]) -> str:
        url = reverse("admin:tenants_tenant_changelist") + f"?plan__id__exact={plan.pk}"
        return format_html('<a href="{}">{}</a>', url, plan.tenant_count)

    @admin.display(description="tenants on this plan")
    def tenants_on_plan(self, plan: Plan) -> str:
        if plan.pk is None:
            return "-"
        tenants = list(Tenant.objects.filter(plan=plan).order_by("slug")[: TENANTS_SHOWN + 1])
        if not tenants:
            return "none"
        links = format_html_join(
            ", ",
            '<a href="{}">{}</a>',
            ((reverse("admin:tenants_tenant_change", args=[t.pk]), t.slug) for t in tenants[:TENANTS_SHOWN]),
        )
        if len(tenants) > TENANTS_SHOWN:
            url = reverse("admin:tenants_tenant_changelist") + f"?plan__id__exact={plan.pk}"
            links = format_html('{} … <a href="{}">all of them</a>', links, url)
        return links


@tenant_page_panel
@admin.display(description="usage")
def usage(tenant: Tenant) -> str:
    if tenant.pk is None:
        return "-"
    used = tenant_usage(tenant=tenant)
    plan = used.plan
    oldest = f"{used.oldest_activity:%Y-%m-%d}" if used.oldest_activity else "-"
    return format_html(
        "<table><tbody>"
        "<tr><th>runs kept</th><td>{}</td><td>oldest last active {}; plan keeps {} days</td></tr>"
        "<tr><th>runs soft-deleted</th><td>{}</td><td>restorable for {} days</td></tr>"
        "<tr><th>events</th><td>{}</td><td>in the runs kept</td></tr>"
        "<tr><th>API keys</th><td>{} of {}</td><td>active, of the plan's most</td></tr>"
        "<tr><th>ingest</th><td>{}</td><td>requests a minute, the plan's limit</td></tr>"
        "</tbody></table>",
        f"{used.runs:,}",
        oldest,
        plan.retention_days,
        f"{used.runs_soft_deleted:,}",
        plan.hard_delete_after_days,
        f"{used.events:,}",
        used.api_keys_active,
        plan.max_api_keys,
        plan.ingest_requests_per_minute,
    )
