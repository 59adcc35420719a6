"""Retention on a tenant's admin page (SPEC section 9): its soft-deleted runs, each with a way to
restore it (`retention.services.retention_restore`), asked first and done through the staff path.

Retention's records have no admin list of their own: the tenant's retention page (/retention/) has
them all.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join

from retention import selectors
from retention.services import RestoreRefused, retention_restore
from runs.models import Run
from tenants.admin import TenantAdmin, tenant_page_panel, tenant_page_urls
from tenants.models import Tenant
from tenants.staff import staff_actor, staff_tenant_access

# Soft-deleted runs listed on a tenant's page; the tenant's own retention page has them all.
RETENTION_SHOWN = 25


@tenant_page_panel
@admin.display(description="soft-deleted runs")
def deleted_runs(tenant: Tenant) -> str:
    if tenant.pk is None:
        return "-"
    runs = list(selectors.soft_deleted_runs(tenant=tenant)[:RETENTION_SHOWN])
    if not runs:
        return "none: every run is kept, or gone for good (see the tenant's retention page)"
    rows = format_html_join(
        "",
        '<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td><a href="{}">restore…</a></td></tr>',
        (
            (
                run.run_id,
                f"soft-deleted {run.deleted_at:%Y-%m-%d %H:%M} UTC",
                f"{run.next_seq:,} events",
                reverse("admin:tenants_tenant_restore_run", args=[tenant.pk, run.run_id]),
            )
            for run in runs
        ),
    )
    return format_html("<table><tbody>{}</tbody></table>", rows)


def restore_run_view(
    tenant_admin: TenantAdmin, request: HttpRequest, object_id: str, run_id: str
) -> HttpResponse:
    """Asks, then restores a soft-deleted run (a POST), which writes a retention record."""
    tenant = tenant_admin.get_object(request, unquote(object_id))
    if tenant is None:
        raise Http404("no such tenant")
    if not tenant_admin.has_change_permission(request, tenant):
        raise PermissionDenied
    change_url = reverse("admin:tenants_tenant_change", args=[tenant.pk])
    actor = staff_actor(request.user)
    if request.method == "POST":
        try:
            record = retention_restore(tenant=tenant, run_id=run_id, actor=actor)
        except RestoreRefused as exc:
            tenant_admin.message_user(request, str(exc), messages.ERROR)
        else:
            tenant_admin.message_user(
                request, f"Run {run_id} is restored: {record.reason}.", messages.SUCCESS
            )
        return HttpResponseRedirect(change_url)
    with staff_tenant_access(tenant=tenant, actor=actor, reason=f"admin: restore run {run_id}?"):
        run = Run.objects.including_deleted().filter(tenant=tenant, run_id=run_id).first()
        deletion = selectors.run_deletion(tenant=tenant, run_id=run_id)
    if run is None or run.deleted_at is None or deletion is None:
        tenant_admin.message_user(
            request, f"Run {run_id} is not soft-deleted: nothing to restore.", messages.ERROR
        )
        return HttpResponseRedirect(change_url)
    context = {
        **tenant_admin.admin_site.each_context(request),
        "opts": tenant_admin.opts,
        "title": f"Restore run {run_id}?",
        "tenant": tenant,
        "run": run,
        "deletion": deletion,
        "change_url": change_url,
    }
    return TemplateResponse(request, "admin/retention/restore_run.html", context)


def _restore_urls(tenant_admin: TenantAdmin) -> list[URLPattern]:
    def view(request: HttpRequest, object_id: str, run_id: str) -> HttpResponse:
        return restore_run_view(tenant_admin, request, object_id, run_id)

    restore = path(
        "<path:object_id>/restore/<str:run_id>/",
        tenant_admin.admin_site.admin_view(view),
        name="tenants_tenant_restore_run",
    )
    return [restore]


tenant_page_urls(_restore_urls)
