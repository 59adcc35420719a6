"""Django admin for tenants, their members, and the staff-access record. Staff only (Django's default).

A tenant's memberships, runs and retention records are its own rows, under row-level security: the
tenant page enters the tenant through the staff path (`tenants.staff`), which records the visit, to
show or save them. Other apps add their panels to the page from their own admin modules
(`tenant_page_panel`): billing the tenant's usage against its plan, retention its soft-deleted runs
with a way to restore each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern

from tenants.models import Identity, Membership, StaffAccess, Tenant
from tenants.staff import staff_actor, staff_tenant_access

# What the apps above tenants show on a tenant's page, each added by that app's own admin module
# (Django's admin imports every app's before serving): tenants imports none of them.
TenantPanel = Callable[[Tenant], str]
_panels: list[TenantPanel] = []
_panel_urls: list[Callable[[TenantAdmin], list[URLPattern]]] = []


def tenant_page_panel(panel: TenantPanel) -> TenantPanel:
    """Adds a read-only panel to every tenant's page: `panel(tenant)` is rendered inside the staff
    path, with the tenant bound; on the page of a tenant not yet saved it gets one with no pk."""
    _panels.append(panel)
    return panel


def tenant_page_urls(urls: Callable[[TenantAdmin], list[URLPattern]]) -> None:
    """Adds admin URLs under a tenant's page (`/admin/tenants/tenant/<pk>/...`), for a panel's links."""
    _panel_urls.append(urls)


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

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[Any, ...]:
        return (*super().get_readonly_fields(request, obj), *_panels)

    def get_urls(self) -> list[URLPattern]:
        added = [pattern for urls in _panel_urls for pattern in urls(self)]
        return [*added, *super().get_urls()]

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
