"""WSGI entry point: HTTP only, for `manage.py serve --http-workers N` (gunicorn's sync workers).

Django's sync views run here without the thread hop every ASGI request pays; WebSocket stays with
daphne (kahn_site.asgi). Static files come from the app itself, as under `manage.py serve`.
"""

import gc
import os

from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kahn_site.settings")
application = StaticFilesHandler(get_wsgi_application())

# What is loaded now lives as long as the worker: frozen out of the cyclic garbage collector, whose
# full collections would otherwise walk all of Django on requests that allocate many objects (a
# batch of 500 events), and leave copy-on-write pages alone.
gc.freeze()
