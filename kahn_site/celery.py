"""The Celery app: Redis at REDIS_URL is the broker, and the beat schedule is here, in one place.

Start a worker with `celery -A kahn_site worker` and the scheduler with `celery -A kahn_site beat`
(docker-compose.yml runs both). Tasks live in each app's `tasks.py` and only call its services.
"""

import os

from celery import Celery
from celery.schedules import crontab

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kahn_site.settings")

app = Celery("kahn_site")
# Every CELERY_* setting of kahn_site/settings.py (broker, results, acknowledgement).
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Daily, in UTC. Hard delete first: yesterday's soft deletes past their grace go before today's
# expired runs are soft-deleted, so each run moves one step a day and the log reads in order.
BEAT_SCHEDULE = {
    "retention-hard-delete": {
        "task": "retention.hard_delete_expired",
        "schedule": crontab(hour=3, minute=0),
    },
    "retention-soft-delete": {
        "task": "retention.soft_delete_expired",
        "schedule": crontab(hour=3, minute=30),
    },
    # Alerts (SPEC section 12): delivered within seconds, retried, and runs gone silent found.
    "alerts-tick": {
        "task": "alerts.tick",
        "schedule": 5.0,
    },
}
app.conf.beat_schedule = BEAT_SCHEDULE
