"""The URLs of cloud mode, for in-process tests that run with OSS settings overridden to cloud.

`kahn_site/urls.py` adds the tenancy URLs when settings.py was imported in cloud mode, which an
in-process test cannot redo; this is the same list, in the same order.
"""

from django.urls import include, path

from kahn_site.urls import handler404, handler500
from kahn_site.urls import urlpatterns as oss_urlpatterns

urlpatterns = [path("", include("tenants.urls")), *oss_urlpatterns]

__all__ = ["handler404", "handler500", "urlpatterns"]
