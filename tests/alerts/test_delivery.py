"""Delivery of the outbox (SPEC section 12), to a real HTTP server on loopback: a webhook signed as
Standard Webhooks do, verified here with the rule's secret; a retry after a 503 with the same
`webhook-id`; every attempt on the Deliveries list; Slack's body; email; redirects not followed; and
in cloud mode no delivery to a loopback, private, link-local or metadata address."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import timedelta
from itertools import pairwise

import orjson
import pytest
from cryptography.fernet import Fernet
from django.utils import timezone

from runs.alerts.delivery import DeliveryRefused, address_checked, notifications_deliver_due
from runs.alerts.models import Notification
from runs.alerts.services import RuleSpec, rule_create
from tenants.context import tenant_scope
from tests.alerts.receiver import webhook_receiver
from tests.conftest import run_record


def make_rule(tenant, url: str, *, kind: str = "webhook", condition: str = "run_failed", to=()):
    spec = RuleSpec(name="failures", condition=condition, channel_kind=kind, url=url or None, to=list(to))
    return rule_create(tenant=tenant, spec=spec)


def verified(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's check, from the Standard Webhooks scheme itself."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(f"v1,{expected}", candidate) for candidate in headers["webhook-signature"].split()
    )


def the_notification(tenant) -> Notification:
    with tenant_scope(tenant):
        return Notification.objects.get(tenant=tenant)


def test_a_failed_run_is_posted_signed_and_a_503_is_retried_with_the_same_id(client, local_tenant):
    with webhook_receiver(503, 200) as receiver:
        _rule, secret = make_rule(local_tenant, receiver.url)
        run_record(local_tenant, "nightly-3", ok=False)
        assert notifications_deliver_due(tenant=local_tenant) == 1
        first = the_notification(local_tenant)
        assert first.status == "pending" and first.attempts == 1
        assert timedelta(0) < first.next_attempt_at - timezone.now() <= timedelta(seconds=30)
        assert notifications_deliver_due(tenant=local_tenant) == 0  # not due yet
        assert notifications_deliver_due(tenant=local_tenant, now=first.next_attempt_at) == 1
    assert the_notification(local_tenant).status == "delivered"
    assert [r.path for r in receiver.requests] == ["/hook", "/hook"]
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert ids == {first.webhook_id}
    for request in receiver.requests:
        assert verified(secret, request.headers, request.body)
        assert not verified(
            "whsec_" + base64.b64encode(b"another key of 24 bytes!").decode(), request.headers, request.body
        )
        assert abs(int(request.headers["webhook-timestamp"]) - timezone.now().timestamp()) < 300
    body = orjson.loads(receiver.requests[-1].body)
    row = client.get("/api/v1/runs/nightly-3/").json()
    assert body["type"] == "run.failed" and body["id"] == first.webhook_id and body["tenant"] == "local"
    assert body["rule"] == {"id": _rule.pk, "name": "failures"} and body["node"] is None
    assert body["run"]["run_id"] == "nightly-3" and body["run"]["outcome"] == "failed"
    assert {k: v for k, v in body["run"].items()} == {k: row[k] for k in body["run"]}
    assert body["url"].endswith("/runs/nightly-3/")
    deliveries = client.get("/api/v1/alerts/deliveries/?run_id=nightly-3").json()["results"]
    (delivery,) = deliveries
    assert [(a["status_code"], a["delivered"]) for a in delivery["attempts"]] == [(200, True), (503, False)]
    assert delivery["status"] == "delivered" and delivery["webhook_id"] == first.webhook_id


def test_the_retries_back_off_for_at_least_a_day_then_the_notification_is_failed(local_tenant):
    from runs.alerts.delivery import RETRY_FOR, retry_delay

    delays = [retry_delay(n) for n in range(1, 40)]
    assert delays[0] <= timedelta(seconds=30)
    assert all(later >= earlier for earlier, later in pairwise(delays))
    with webhook_receiver(*([500] * 100)) as receiver:
        make_rule(local_tenant, receiver.url)
        run_record(local_tenant, "flaky-endpoint", ok=False)
        created = the_notification(local_tenant).created_at
        moment = created
        while the_notification(local_tenant).status == "pending":
            moment = the_notification(local_tenant).next_attempt_at
            notifications_deliver_due(tenant=local_tenant, now=moment)
    gave_up = the_notification(local_tenant)
    assert gave_up.status == "failed" and moment - created >= RETRY_FOR >= timedelta(hours=24)
    assert gave_up.attempts == len(receiver.requests) < 60


def test_a_redirect_is_not_followed(local_tenant):
    with webhook_receiver(302) as receiver:
        make_rule(local_tenant, receiver.url)
        run_record(local_tenant, "moved", ok=False)
        notifications_deliver_due(tenant=local_tenant)
    assert [r.path for r in receiver.requests] == ["/hook"]  # never /elsewhere
    notification = the_notification(local_tenant)
    assert notification.status == "pending"
    with tenant_scope(local_tenant):
        (attempt,) = notification.delivery_attempts.all()
    assert attempt.status_code == 302 and not attempt.delivered


def test_slack_gets_a_message_with_the_run_its_outcome_and_a_link(local_tenant):
    with webhook_receiver() as receiver:
        make_rule(local_tenant, receiver.url, kind="slack")
        run_record(local_tenant, "nightly-9", ok=False)
        notifications_deliver_due(tenant=local_tenant)
    (request,) = receiver.requests
    assert "webhook-signature" not in request.headers
    message = orjson.loads(request.body)
    assert set(message) == {"text"}
    assert "nightly-9" in message["text"] and "failed" in message["text"]
    assert "/runs/nightly-9/|" in message["text"]  # Slack's <url|label> link


def test_email_is_sent_through_djangos_backend(local_tenant, mailoutbox):
    make_rule(local_tenant, "", kind="email", to=["ops@example.com", "oncall@example.com"])
    run_record(local_tenant, "nightly-4", ok=False)
    notifications_deliver_due(tenant=local_tenant)
    (mail,) = mailoutbox
    assert mail.to == ["ops@example.com", "oncall@example.com"]
    assert "nightly-4" in mail.subject and "failed" in mail.subject
    assert "/runs/nightly-4/" in mail.body
    assert the_notification(local_tenant).status == "delivered"


def test_send_test_is_delivered_like_any_notification(client, local_tenant):
    with webhook_receiver() as receiver:
        rule, secret = make_rule(local_tenant, receiver.url)
        assert client.post(f"/api/v1/alerts/rules/{rule.pk}/test").status_code == 202
        notifications_deliver_due(tenant=local_tenant)
    (request,) = receiver.requests
    body = orjson.loads(request.body)
    assert body["type"] == "test" and body["run"] is None and verified(secret, request.headers, request.body)


# ---------------------------------------------------------------- the address guard (cloud)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "10.0.0.5", "169.254.169.254", "::1", "localhost", "192.168.1.20"]
)
def test_cloud_refuses_loopback_private_link_local_and_metadata_addresses(settings, host):
    settings.CLOUD, settings.KAHN_ALERT_ALLOW_PRIVATE = True, False
    with pytest.raises(DeliveryRefused, match="loopback, private, link-local or multicast"):
        address_checked(host, 80)
    settings.KAHN_ALERT_ALLOW_PRIVATE = True
    assert address_checked(host, 80)


def test_cloud_records_the_refusal_and_sends_nothing_to_loopback_unless_allowed(local_tenant, settings):
    settings.KAHN_ENCRYPTION_KEY = Fernet.generate_key().decode()
    settings.CLOUD, settings.KAHN_ALERT_ALLOW_PRIVATE = True, False
    with webhook_receiver() as receiver:
        for url in (receiver.url, receiver.url.replace("127.0.0.1", "localhost"), "http://[::1]:9/hook"):
            make_rule(local_tenant, url)
        run_record(local_tenant, "internal", ok=False)
        assert notifications_deliver_due(tenant=local_tenant) == 3
        assert receiver.requests == []
        with tenant_scope(local_tenant):
            errors = sorted(
                a.error
                for n in Notification.objects.filter(tenant=local_tenant)
                for a in n.delivery_attempts.all()
            )
        assert (
            all("loopback, private, link-local or multicast" in error for error in errors)
            and len(errors) == 3
        )
        settings.KAHN_ALERT_ALLOW_PRIVATE = True
        notifications_deliver_due(tenant=local_tenant, now=timezone.now() + timedelta(minutes=1))
    assert len(receiver.requests) == 2  # 127.0.0.1 and localhost; nothing listens on [::1]:9
