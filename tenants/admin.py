"""Django admin for tenants, their members, and the staff-access record. Staff only (Django's default).

A tenant's memberships are its own rows, under row-level security: the tenant page enters the tenant
through the staff path (`tenants.staff`), which records the visit, to show or save them.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from tenants.models import Identity, Membership, StaffAccess, Tenant
from tenants.staff import staff_actor, staff_tenant_access


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
            return super().changeform_view(request, object_id, form_url, extra_context)

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
