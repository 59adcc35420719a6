"""ASGI entry point: HTTP (and, with Channels, WebSocket) for `manage.py serve` and daphne."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kahn_site.settings")
application = get_asgi_application()
