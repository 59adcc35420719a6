"""The guard of pages that change or publish what a workspace shares (its alerts, its badges)."""

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from tenants.context import tenant_current


def managers_only_in_cloud(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """In cloud mode, the workspace's owners and admins only: a stranger signs in first, a member
    gets the 403 page of tenancy. OSS has one operator, who may."""

    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if settings.CLOUD:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            membership = getattr(request, "membership", None)
            if membership is None or not membership.manages_tenant:
                return render(request, "tenants/managers_only.html", {"tenant": tenant_current()}, status=403)
        return view(request, *args, **kwargs)

    return guarded
