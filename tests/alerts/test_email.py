"""Email alerts through Django's SMTP backend, configured by EMAIL_URL, to a real SMTP server on
loopback (aiosmtpd)."""

from __future__ import annotations

from email import message_from_bytes

import environ
import pytest
from aiosmtpd.controller import Controller

from runs.alerts.delivery import notifications_deliver_due
from runs.alerts.models import Notification
from runs.alerts.services import RuleSpec, rule_create
from tenants.context import tenant_scope
from tests.conftest import run_record
from tests.servers import free_port


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, inbox
    finally:
        controller.stop()


def test_an_email_alert_arrives_at_a_real_smtp_server(local_tenant, smtp_server, settings):
    port, inbox = smtp_server
    # What settings.py does with EMAIL_URL=smtp://127.0.0.1:PORT.
    for name, value in environ.Env.email_url_config(f"smtp://127.0.0.1:{port}").items():
        setattr(settings, name, value)
    spec = RuleSpec(
        name="failures by mail", condition="run_failed", channel_kind="email", to=["ops@example.com"]
    )
    rule_create(tenant=local_tenant, spec=spec)
    run_record(local_tenant, "nightly-12", ok=False)
    assert notifications_deliver_due(tenant=local_tenant) == 1
    ((sender, recipients, content),) = inbox.messages
    assert recipients == ["ops@example.com"] and sender == settings.DEFAULT_FROM_EMAIL
    mail = message_from_bytes(content)
    assert "nightly-12" in mail["Subject"] and "failed" in mail["Subject"]
    assert "/runs/nightly-12/" in mail.get_payload()
    with tenant_scope(local_tenant):
        assert Notification.objects.get(tenant=local_tenant).status == "delivered"


def test_an_unreachable_smtp_server_is_an_attempt_recorded_and_retried(local_tenant, settings):
    for name, value in environ.Env.email_url_config(f"smtp://127.0.0.1:{free_port()}").items():
        setattr(settings, name, value)
    spec = RuleSpec(
        name="failures by mail", condition="run_failed", channel_kind="email", to=["ops@example.com"]
    )
    rule_create(tenant=local_tenant, spec=spec)
    run_record(local_tenant, "nightly-13", ok=False)
    notifications_deliver_due(tenant=local_tenant)
    with tenant_scope(local_tenant):
        notification = Notification.objects.get(tenant=local_tenant)
        (attempt,) = notification.delivery_attempts.all()
    assert notification.status == "pending" and "ConnectionRefusedError" in attempt.error
