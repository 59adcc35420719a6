"""Delivery of the outbox: due notifications are taken (FOR UPDATE SKIP LOCKED, so several workers
never send one twice at once), sent, their attempt recorded, and a failure retried later.

A worker that dies mid-delivery leaves its notification pending (its transaction rolls back), and
the next worker sends it again with the same `webhook-id`: receivers deduplicate by it.

Cloud mode checks the address a channel resolves to at send time, and connects to that checked
address: loopback, private, link-local (the cloud metadata address among them), multicast and
reserved ones are refused, unless KAHN_ALERT_ALLOW_PRIVATE. Redirects are never followed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson
from django.conf import settings
from django.core.mail import send_mail
from django.db import close_old_connections, transaction
from django.urls import reverse
from django.utils import timezone

from kahn_site import metrics
from runs import selectors
from runs.alerts.encryption import InvalidToken, secret_decrypt
from runs.alerts.models import TEST_TYPE, ChannelKind, DeliveryAttempt, Notification, NotificationStatus
from runs.alerts.services import run_interrupted_check
from runs.alerts.wake import delivery_wait
from runs.models import Run
from runs.read_model import run_row_data
from tenants.context import tenant_atomic
from tenants.models import Tenant

logger = logging.getLogger(__name__)

TIMEOUT_S = 10.0
# Retries: the first after FIRST_RETRY, each next one after twice the last, at most MAX_RETRY apart,
# until the notification is older than RETRY_FOR; then it is marked failed.
FIRST_RETRY = timedelta(seconds=10)
MAX_RETRY = timedelta(hours=1)
RETRY_FOR = timedelta(hours=25)
# Notifications one tenant's turn sends, so one busy tenant does not hold the others back.
PER_TENANT = 50
# Bytes of a receiver's answer kept in the attempt's record.
ANSWER_KEPT = 200


class DeliveryRefused(Exception):
    """The channel may not be sent to (an address the SSRF guard refuses, a bad URL)."""


# ---------------------------------------------------------------- Standard Webhooks signing


def webhook_signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`, keyed by the secret's bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


# ---------------------------------------------------------------- the address guard


def address_allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def address_checked(host: str, port: int) -> str:
    """The address to connect to for `host`: in cloud mode every address it resolves to must be
    public (DeliveryRefused otherwise), and the connection goes to the one checked here."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise DeliveryRefused(f"cannot resolve {host}: {exc}") from exc
    addresses = [str(info[4][0]) for info in infos]
    if settings.CLOUD and not settings.KAHN_ALERT_ALLOW_PRIVATE:
        refused = [a for a in addresses if not address_allowed(a)]
        if refused:
            raise DeliveryRefused(
                f"{host} resolves to {refused[0]}, a loopback, private, link-local or multicast address"
            )
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        # The certificate is checked against the host name, while the socket goes to the address.
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def http_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """POSTs to `url` through the address guard; returns the status and the start of the answer.
    Redirects are answers like others (not 2xx: retried), never followed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryRefused("the channel's URL is not an http:// or https:// URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = address_checked(parts.hostname, port)
    connection_class = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    connection = connection_class(parts.hostname, port, address, TIMEOUT_S)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        answer = response.read(ANSWER_KEPT).decode("utf-8", "replace")
        return response.status, answer
    finally:
        connection.close()


# ---------------------------------------------------------------- what is sent


def site_url(path: str) -> str:
    origins = settings.KAHN_SITE_ORIGINS
    return f"{origins[0]}{path}" if origins else path


def _run_row(tenant: Tenant, run_id: str) -> dict[str, Any] | None:
    if not run_id:
        return None
    try:
        run = selectors.run_get(tenant=tenant, run_id=run_id)
    except Run.DoesNotExist:
        return None
    (row,) = selectors.run_rows([run], tenant=tenant, now=timezone.now())
    return run_row_data(row)


def notification_body(tenant: Tenant, notification: Notification) -> dict[str, Any]:
    """The webhook's JSON body (SPEC section 12)."""
    rule = notification.rule
    run_id = notification.run_id
    return {
        "type": notification.type,
        "id": notification.webhook_id,
        "tenant": tenant.slug,
        "rule": {"id": rule.pk, "name": rule.name},
        "run": _run_row(tenant, run_id),
        "node": notification.node if notification.node and notification.type != TEST_TYPE else None,
        "details": notification.details,
        "url": site_url(reverse("run", args=[run_id])) if run_id else site_url(reverse("history")),
    }


def _headline(body: dict[str, Any]) -> str:
    run = body["run"] or {}
    what = {
        "run.failed": "failed",
        "run.flaky": "passed with flaky retries",
        "run.interrupted": "was interrupted",
        "run.diagnostic": "has an error diagnostic",
        "node.slow": "has a slow node",
        "node.flaky": "has a flaky node",
    }.get(body["type"])
    if what is None:
        return f"Test of the alert rule {body['rule']['name']!r} ({body['tenant']})"
    node = f" (node {body['node']})" if body["node"] else ""
    outcome = f", outcome {run['outcome']}" if run.get("outcome") else ""
    return f"Run {run.get('run_id', '?')} {what}{node}{outcome} [{body['rule']['name']}]"


@dataclass(frozen=True)
class Result:
    delivered: bool
    status_code: int | None = None
    error: str = ""


def _send(tenant: Tenant, notification: Notification) -> Result:
    rule = notification.rule
    body = notification_body(tenant, notification)
    try:
        if rule.channel_kind == ChannelKind.EMAIL:
            text = f"{_headline(body)}\n\n{body['url']}\n\n{orjson.dumps(body['details']).decode()}\n"
            send_mail(_headline(body), text, None, list(rule.channel_to), fail_silently=False)
            return Result(delivered=True)
        url = secret_decrypt(rule.channel_url_encrypted)
        if rule.channel_kind == ChannelKind.SLACK:
            payload = orjson.dumps({"text": f"{_headline(body)}\n<{body['url']}|Open the run in Scope>"})
            headers: dict[str, str] = {}
        else:
            payload = orjson.dumps(body)
            timestamp = int(time.time())
            secret = secret_decrypt(rule.channel_secret_encrypted)
            headers = {
                "webhook-id": notification.webhook_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": webhook_signature(secret, notification.webhook_id, timestamp, payload),
            }
        status, answer = http_post(url, payload, headers)
    except InvalidToken:
        return Result(delivered=False, error="the channel's secret cannot be read with KAHN_ENCRYPTION_KEY")
    except DeliveryRefused as exc:
        return Result(delivered=False, error=str(exc))
    except (OSError, http.client.HTTPException) as exc:
        return Result(delivered=False, error=f"{type(exc).__name__}: {exc}"[:500])
    if 200 <= status < 300:
        return Result(delivered=True, status_code=status)
    return Result(delivered=False, status_code=status, error=answer)


def retry_delay(attempts: int) -> timedelta:
    """After `attempts` failed attempts (1 or more): FIRST_RETRY, then 30 s doubling each time."""
    if attempts <= 1:
        return FIRST_RETRY
    return min(timedelta(seconds=30) * 2 ** min(attempts - 2, 20), MAX_RETRY)


def notification_deliver(
    *, tenant: Tenant, notification: Notification, now: datetime | None = None
) -> Result:
    """Sends one notification (locked by the caller), records the attempt, schedules what is next."""
    result = _send(tenant, notification)
    now = now or timezone.now()
    DeliveryAttempt.objects.create(
        tenant=tenant,
        notification=notification,
        at=now,
        status_code=result.status_code,
        error=result.error[:2000],
        delivered=result.delivered,
    )
    # Counted once the attempt's record is committed, as the tenant's figures count it.
    outcome = "delivered" if result.delivered else "failed"
    counter = metrics.ALERT_DELIVERIES.labels(notification.rule.channel_kind, outcome)
    transaction.on_commit(counter.inc)
    attempts = notification.attempts + 1
    if result.delivered:
        status, next_at = NotificationStatus.DELIVERED, None
    elif now - notification.created_at >= RETRY_FOR:
        status, next_at = NotificationStatus.FAILED, None
    else:
        status, next_at = NotificationStatus.PENDING, now + retry_delay(attempts)
    Notification.objects.filter(tenant=tenant, pk=notification.pk).update(
        attempts=attempts, status=status, next_attempt_at=next_at
    )
    return result


def notifications_deliver_due(*, tenant: Tenant, now: datetime | None = None, limit: int = PER_TENANT) -> int:
    """Delivers the tenant's due notifications, each in its own transaction, holding its row lock
    while it is sent; returns how many were attempted."""
    done = 0
    while done < limit:
        with tenant_atomic(tenant):
            moment = now or timezone.now()
            notification = (
                Notification.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("rule")
                .filter(tenant=tenant, status=NotificationStatus.PENDING, next_attempt_at__lte=moment)
                .order_by("next_attempt_at", "id")
                .first()
            )
            if notification is None:
                return done
            notification_deliver(tenant=tenant, notification=notification, now=moment)
        done += 1
    return done


def alerts_tick(*, now: datetime | None = None) -> int:
    """The worker's tick, for every tenant: the periodic check (`run_interrupted`), then delivery of
    what is due. Returns how many notifications were attempted."""
    done = 0
    for tenant in Tenant.objects.order_by("pk"):
        try:
            with tenant_atomic(tenant):
                run_interrupted_check(tenant=tenant, now=now)
            done += notifications_deliver_due(tenant=tenant, now=now)
        except Exception:
            logger.exception("alerts: the tick failed for tenant %s", tenant.slug)
    return done


# ---------------------------------------------------------------- the OSS loop


def delivery_loop(*, stop: threading.Event, interval: float = 2.0) -> None:
    """OSS `serve`'s thread: the tick every `interval` seconds, or at once when the write path
    has just committed a notification, until `stop` is set."""
    while not stop.is_set():
        close_old_connections()
        try:
            alerts_tick()
        except Exception:
            logger.exception("alerts: the delivery loop's tick failed")
        delivery_wait(interval)
    close_old_connections()
