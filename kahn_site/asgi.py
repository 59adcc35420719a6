"""ASGI entry point for `manage.py serve` and daphne: HTTP, and WebSocket at /ws/live.

The WebSocket side checks that a socket acting by the browser's cookie comes from one of the site's
own origins (a page of another site cannot open a socket with a visitor's session cookie), then
loads the session and its user; the consumer decides whom the socket acts for (tenants.sockets).
The whole application is wrapped by the live publisher, so that writers in request threads hand
their updates to the loop that serves sockets.

Request bodies are admitted by the server before they reach this application (daphne reads a body
whole before calling it): see kahn_site.http_server.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kahn_site.settings")
# Sets Django up: the imports below load models.
django_application = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from kahn_site.live_fanout import live_publisher  # noqa: E402
from runs.urls import websocket_urlpatterns  # noqa: E402
from tenants.sockets import SiteOriginValidator  # noqa: E402

# channels' stubs type ASGI scopes as asgiref's TypedDicts, and its routes as its own kind of
# pattern; the publisher takes any scope, and Django's `path` makes the routes, as channels documents.
application = live_publisher.serving(
    ProtocolTypeRouter(  # type: ignore[arg-type]
        {
            "http": django_application,
            "websocket": SiteOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),  # type: ignore[arg-type]
        }
    )
)
