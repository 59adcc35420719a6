"""Django admin for tenants, their members, and the staff-access record. Staff only (Django's default).

A tenant's memberships, runs and retention records are its own rows, under row-level security: the
tenant page enters the tenant through the staff path (`tenants.staff`), which records the visit, to
show or save them. The page also shows the tenant's usage against its plan, and its soft-deleted
runs, each with a way to restore it (`retention.services.retention_restore`).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join

from billing.selectors import tenant_usage
from retention import selectors as retention_selectors
from retention.services import RestoreRefused, retention_restore
from runs.models import Run
from tenants.models import Identity, Membership, StaffAccess, Tenant
from tenants.staff import staff_actor, staff_tenant_access

# Soft-deleted runs and retention records listed on a tenant's page; the tenant's own retention
# page (/retention/) has them all.
RETENTION_SHOWN = 25


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ("user",)
    fields = ("user", "role", "created_at")
    readonly_fields = ("created_at",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Membership]:
        # The staff path: the tenant page binds the tenant it shows (TenantAdmin below), and the
        # formset narrows to it; a new tenant's page has no rows to show.
        return Membership.objects.unscoped().select_related("user")


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "plan", "key_prefix", "created_at")
    list_select_related = ("plan",)
    search_fields = ("slug", "name", "key_prefix")
    list_filter = ("plan",)
    inlines = (MembershipInline,)
    readonly_fields = ("usage", "deleted_runs")

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: Any = None,
    ) -> HttpResponse:
        tenant = self.get_object(request, unquote(object_id)) if object_id else None
        if tenant is None:
            return super().changeform_view(request, object_id, form_url, extra_context)
        with staff_tenant_access(tenant=tenant, actor=staff_actor(request.user), reason="admin: tenant page"):
            response = super().changeform_view(request, object_id, form_url, extra_context)
            # Rendered here, inside the staff path: a template response renders after the view
            # returns, when the tenant is no longer bound and its rows read as empty.
            if isinstance(response, TemplateResponse):
                response.render()
            return response

    @admin.display(description="usage")
    def usage(self, tenant: Tenant) -> str:
        if tenant.pk is None:
            return "-"
        usage = tenant_usage(tenant=tenant)
        plan = usage.plan
        oldest = f"{usage.oldest_activity:%Y-%m-%d}" if usage.oldest_activity else "-"
        return format_html(
            "<table><tbody>"
            "<tr><th>runs kept</th><td>{}</td><td>oldest last active {}; plan keeps {} days</td></tr>"
            "<tr><th>runs soft-deleted</th><td>{}</td><td>restorable for {} days</td></tr>"
            "<tr><th>events</th><td>{}</td><td>in the runs kept</td></tr>"
            "<tr><th>API keys</th><td>{} of {}</td><td>active, of the plan's most</td></tr>"
            "<tr><th>ingest</th><td>{}</td><td>requests a minute, the plan's limit</td></tr>"
            "</tbody></table>",
            f"{usage.runs:,}",
            oldest,
            plan.retention_days,
            f"{usage.runs_soft_deleted:,}",
            plan.hard_delete_after_days,
            f"{usage.events:,}",
            usage.api_keys_active,
            plan.max_api_keys,
            plan.ingest_requests_per_minute,
        )

    @admin.display(description="soft-deleted runs")
    def deleted_runs(self, tenant: Tenant) -> str:
        if tenant.pk is None:
            return "-"
        runs = list(retention_selectors.soft_deleted_runs(tenant=tenant)[:RETENTION_SHOWN])
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

    def get_urls(self) -> list[URLPattern]:
        restore = path(
            "<path:object_id>/restore/<str:run_id>/",
            self.admin_site.admin_view(self.restore_run_view),
            name="tenants_tenant_restore_run",
        )
        return [restore, *super().get_urls()]

    def restore_run_view(self, request: HttpRequest, object_id: str, run_id: str) -> HttpResponse:
        """Asks, then restores a soft-deleted run (a POST), which writes a retention record."""
        tenant = self.get_object(request, unquote(object_id))
        if tenant is None:
            raise Http404("no such tenant")
        if not self.has_change_permission(request, tenant):
            raise PermissionDenied
        change_url = reverse("admin:tenants_tenant_change", args=[tenant.pk])
        actor = staff_actor(request.user)
        if request.method == "POST":
            try:
                record = retention_restore(tenant=tenant, run_id=run_id, actor=actor)
            except RestoreRefused as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(request, f"Run {run_id} is restored: {record.reason}.", messages.SUCCESS)
            return HttpResponseRedirect(change_url)
        with staff_tenant_access(tenant=tenant, actor=actor, reason=f"admin: restore run {run_id}?"):
            run = Run.objects.including_deleted().filter(tenant=tenant, run_id=run_id).first()
            deletion = retention_selectors.run_deletion(tenant=tenant, run_id=run_id)
        if run is None or run.deleted_at is None or deletion is None:
            self.message_user(
                request, f"Run {run_id} is not soft-deleted: nothing to restore.", messages.ERROR
            )
            return HttpResponseRedirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Restore run {run_id}?",
            "tenant": tenant,
            "run": run,
            "deletion": deletion,
            "change_url": change_url,
        }
        return TemplateResponse(request, "admin/retention/restore_run.html", context)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # A new tenant's first members are written inside it, like any of its rows.
        tenant = form.instance
        with staff_tenant_access(
            tenant=tenant, actor=staff_actor(request.user), reason="admin: save members"
        ):
            super().save_related(request, form, formsets, change)

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> HttpResponse:
        # Entered so that the deletion sees (and PROTECT refuses for) the tenant's runs.
        tenant = self.get_object(request, unquote(object_id))
        if tenant is None:
            return super().delete_view(request, object_id, extra_context)
        with staff_tenant_access(
            tenant=tenant, actor=staff_actor(request.user), reason="admin: delete tenant"
        ):
            return super().delete_view(request, object_id, extra_context)


@admin.register(Identity)
class IdentityAdmin(admin.ModelAdmin):
    list_display = ("sub", "user", "created_at")
    search_fields = ("sub", "user__email", "user__username")
    readonly_fields = ("sub", "user", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Identities are made by signing in; deleting one lets the next sign-in claim the user anew.
        return False


@admin.register(StaffAccess)
class StaffAccessAdmin(admin.ModelAdmin):
    list_display = ("at", "actor", "tenant_slug", "reason")
    list_filter = ("tenant_slug",)
    search_fields = ("actor", "tenant_slug", "reason")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The record is what answers "who looked at our data": nobody edits it from the admin.
        return False
