"""Alert rules through the API and the Alerts page (SPEC section 12): made, listed, changed,
removed, tested; a webhook's secret shown once; an invalid body named field by field; owners and
admins only in cloud mode, a `read` key for GETs; and channel secrets never stored in clear."""

from __future__ import annotations

import re
from html import unescape

import pytest
from cryptography.fernet import Fernet
from django.db import connection
from django.test import Client

from runs.alerts.encryption import InvalidToken
from runs.alerts.models import AlertRule, Notification
from tenants.context import tenant_scope
from tenants.models import ApiKeyScope
from tenants.services import api_key_create
from tests.conftest import run_record
from tests.tenants.conftest import database_dump

RULES = "/api/v1/alerts/rules/"
HOOK_URL = "https://hooks.example.net/kahn/very-secret-path-8c1f"


def webhook_rule(**extra):
    return {
        "name": "nightly failures",
        "condition": "run_failed",
        "filter": {"run_id": "nightly-*"},
        "channel": {"kind": "webhook", "url": HOOK_URL},
        **extra,
    }


def post(client: Client, body, **headers):
    return client.post(RULES, body, content_type="application/json", headers=headers)


def rules_of(tenant) -> list[AlertRule]:
    with tenant_scope(tenant):
        return list(AlertRule.objects.filter(tenant=tenant))


# ---------------------------------------------------------------- the API (OSS: anyone local)


def test_a_webhook_rule_is_made_with_its_secret_shown_once(client, local_tenant):
    response = post(client, webhook_rule(cooldown_s=60))
    assert response.status_code == 201
    rule = response.json()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{32}", rule.pop("secret"))
    assert rule["name"] == "nightly failures" and rule["condition"] == "run_failed"
    assert rule["filter"] == {"run_id": "nightly-*"} and rule["cooldown_s"] == 60
    assert rule["channel"] == {"kind": "webhook"}  # never the URL
    shown = client.get(f"{RULES}{rule['id']}/").json()
    assert "secret" not in shown and HOOK_URL not in str(shown)
    assert [r["id"] for r in client.get(RULES).json()] == [rule["id"]]


def test_an_invalid_rule_is_a_400_naming_each_field(client, local_tenant):
    body = {
        "name": "",
        "condition": "run_exploded",
        "channel": {"kind": "webhook", "url": "ftp://x"},
        "params": {"window": 2},
        "colour": "red",
    }
    response = post(client, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_rule"
    fields = {problem["field"] for problem in error["details"]["errors"]}
    assert fields == {"name", "condition", "channel.url", "params.window", "colour"}
    email = post(
        client, {"name": "x", "condition": "run_failed", "channel": {"kind": "email", "to": ["nope"]}}
    )
    assert [p["field"] for p in email.json()["error"]["details"]["errors"]] == ["channel.to[0]"]
    assert post(client, [1, 2]).status_code == 400
    assert rules_of(local_tenant) == []


def test_a_rule_is_changed_kept_where_the_body_is_silent_and_removed(client, local_tenant):
    rule = post(client, webhook_rule()).json()
    url = f"{RULES}{rule['id']}/"
    changed = client.patch(
        url, {"enabled": False, "filter": {"run_id": "release-*"}}, content_type="application/json"
    )
    assert changed.status_code == 200
    assert changed.json()["enabled"] is False and changed.json()["filter"] == {"run_id": "release-*"}
    assert "secret" not in changed.json()  # still the same webhook: the same secret
    to_email = client.patch(
        url, {"channel": {"kind": "email", "to": ["ops@example.com"]}}, content_type="application/json"
    )
    assert to_email.json()["channel"] == {"kind": "email", "to": ["ops@example.com"]}
    (stored,) = rules_of(local_tenant)
    assert stored.channel_url_encrypted == "" and stored.channel_secret_encrypted == ""
    assert client.patch(url, {"cooldown_s": -1}, content_type="application/json").status_code == 400
    assert client.delete(url).status_code == 204
    assert client.get(url).status_code == 404
    assert client.get(url).json()["error"]["code"] == "rule_not_found"


def test_send_test_records_a_notification_listed_in_deliveries(client, local_tenant):
    rule = post(client, webhook_rule()).json()
    assert client.post(f"{RULES}{rule['id']}/test").status_code == 202
    deliveries = client.get("/api/v1/alerts/deliveries/").json()
    (delivery,) = deliveries["results"]
    assert delivery["type"] == "test" and delivery["rule"] == {"id": rule["id"], "name": "nightly failures"}
    assert delivery["status"] == "pending" and delivery["attempts"] == []
    assert client.get("/api/v1/alerts/deliveries/?status=delivered").json()["results"] == []
    bad = client.get("/api/v1/alerts/deliveries/?status=lost&rule=x")
    assert bad.status_code == 400
    assert {p["field"] for p in bad.json()["error"]["details"]["errors"]} == {"status", "rule"}


# ---------------------------------------------------------------- cloud: who may


def test_cloud_owners_and_admins_manage_rules_members_and_keys_do_not_write(cloud, world):
    cloud.force_login(world.alice)  # owner of acme
    made = post(cloud, webhook_rule())
    assert made.status_code == 201
    cloud.force_login(world.carol)  # member of acme, admin of globex
    refused = post(cloud, webhook_rule())
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert cloud.get(RULES).status_code == 403
    assert post(cloud, webhook_rule(), **{"X-Organization": "globex"}).status_code == 201
    # globex's rule is not acme's: nothing crosses tenants.
    assert [r.name for r in rules_of(world.acme)] == ["nightly failures"]
    assert len(rules_of(world.globex)) == 1
    cloud.logout()
    _, read_key = api_key_create(tenant=world.acme, name="reader", scopes=[ApiKeyScope.READ])
    listed = cloud.get(RULES, headers={"Authorization": f"Bearer {read_key}"})
    assert listed.status_code == 200 and [r["name"] for r in listed.json()] == ["nightly failures"]
    write = post(cloud, webhook_rule(), Authorization=f"Bearer {read_key}")
    assert write.status_code == 403 and write.json()["error"]["code"] == "insufficient_scope"
    other = rules_of(world.globex)[0]
    assert (
        cloud.get(f"{RULES}{other.pk}/", headers={"Authorization": f"Bearer {read_key}"}).status_code == 404
    )


# ---------------------------------------------------------------- the page


def test_the_alerts_page_makes_a_rule_shows_its_secret_once_and_sends_a_test(client, local_tenant):
    page = client.get("/alerts/")
    assert page.status_code == 200 and "No alert rules yet" in page.text
    form = {
        "name": "failures",
        "condition": "run_failed",
        "channel_kind": "webhook",
        "url": HOOK_URL,
        "cooldown_s": "0",
    }
    made = client.post("/alerts/", form)
    assert made.status_code == 200 and "only time it is shown" in made.text
    secret = unescape(re.search(r'id="new-secret" type="text" value="([^"]+)"', made.text).group(1))
    assert secret.startswith("whsec_") and "no-store" in made["Cache-Control"]
    again = client.get("/alerts/").text
    assert secret not in again and HOOK_URL not in again and "failures" in again
    (rule,) = rules_of(local_tenant)
    tested = client.post(f"/alerts/{rule.pk}/test/", follow=True)
    assert "is on its way" in tested.text
    assert re.search(r'class="delivery-status">pending<', tested.text)
    bad = client.post("/alerts/", {**form, "url": "not a url", "name": ""})
    assert bad.status_code == 400 and "This field is required" in bad.text and "URL" in bad.text
    client.post(f"/alerts/{rule.pk}/delete/")
    assert rules_of(local_tenant) == []


def test_the_alerts_page_turns_a_rule_off_and_on_and_an_off_rule_records_nothing(client, local_tenant):
    client.post(
        "/alerts/",
        {"name": "failures", "condition": "run_failed", "channel_kind": "webhook", "url": HOOK_URL},
    )
    (rule,) = rules_of(local_tenant)
    assert 'name="enabled" value="off"' in client.get("/alerts/").text

    turned = client.post(f"/alerts/{rule.pk}/enabled/", {"enabled": "off"}, follow=True)
    assert "records nothing until it is turned on" in turned.text and "(off)" in turned.text
    assert (
        client.post(f"/alerts/{rule.pk}/enabled/", {"enabled": "off"}).status_code == 302
    )  # twice: still off
    (rule,) = rules_of(local_tenant)
    assert not rule.enabled and rule.channel_url_encrypted  # its channel is kept
    run_record(local_tenant, "failed_while_off", ok=False)
    with tenant_scope(local_tenant):
        assert not Notification.objects.filter(tenant=local_tenant).exists()

    bad = client.post(f"/alerts/{rule.pk}/enabled/", {"enabled": "maybe"})
    assert bad.status_code == 400 and "on or off" in bad.text
    assert client.post("/alerts/999999/enabled/", {"enabled": "on"}).status_code == 404

    client.post(f"/alerts/{rule.pk}/enabled/", {"enabled": "on"})
    run_record(local_tenant, "failed_when_on", ok=False)
    with tenant_scope(local_tenant):
        notified = list(Notification.objects.filter(tenant=local_tenant).values_list("run_id", flat=True))
    assert notified == ["failed_when_on"]


def test_a_member_gets_no_alerts_page_in_cloud(cloud, world):
    cloud.force_login(world.carol)
    assert cloud.get("/alerts/").status_code == 403
    assert cloud.post("/alerts/1/enabled/", {"enabled": "off"}).status_code == 403
    assert 'href="/alerts/"' not in cloud.get("/").text
    cloud.force_login(world.alice)
    assert cloud.get("/alerts/").status_code == 200
    assert 'href="/alerts/"' in cloud.get("/").text


# ---------------------------------------------------------------- secrets at rest


@pytest.mark.django_db(transaction=True)
def test_no_channel_url_or_secret_is_in_a_database_dump(client, local_tenant):
    secret = post(client, webhook_rule()).json()["secret"]
    slack = "https://hooks.slack.com/services/T000/B000/slack-secret-token"
    post(client, {"name": "s", "condition": "run_flaky", "channel": {"kind": "slack", "url": slack}})
    dump = database_dump()
    assert "alerts_alertrule" in dump and "nightly failures" in dump  # the dump did reach the rules
    for clear in (
        HOOK_URL,
        "very-secret-path",
        secret,
        secret.removeprefix("whsec_"),
        slack,
        "slack-secret-token",
    ):
        assert clear not in dump


def test_rotation_reads_old_rows_and_writes_new_ones_with_the_first_key(client, local_tenant, settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.KAHN_ENCRYPTION_KEY = old
    post(client, webhook_rule())
    settings.KAHN_ENCRYPTION_KEY = f"{new},{old}"
    from runs.alerts.encryption import secret_decrypt

    (rule,) = rules_of(local_tenant)
    assert secret_decrypt(rule.channel_url_encrypted) == HOOK_URL  # an old row, read
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("alerts_rotate_key", stdout=out)  # the operator's command, over every tenant
    assert out.getvalue().strip() == "1 alert rule re-encrypted with the first key"
    (rule,) = rules_of(local_tenant)
    settings.KAHN_ENCRYPTION_KEY = new  # the old key retired: rotated rows still open
    assert secret_decrypt(rule.channel_url_encrypted) == HOOK_URL
    assert secret_decrypt(rule.channel_secret_encrypted).startswith("whsec_")
    post(client, webhook_rule(name="made after"))
    settings.KAHN_ENCRYPTION_KEY = old
    made_after = next(r for r in rules_of(local_tenant) if r.name == "made after")
    with pytest.raises(InvalidToken):  # written with the first key, not the retired one
        secret_decrypt(made_after.channel_url_encrypted)


def test_cloud_without_an_encryption_key_refuses_a_channel_clearly(cloud, world, settings):
    settings.KAHN_ENCRYPTION_KEY = ""
    cloud.force_login(world.alice)
    response = post(cloud, webhook_rule())
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "encryption_not_configured"
    assert "KAHN_ENCRYPTION_KEY" in response.json()["error"]["message"]
    assert rules_of(world.acme) == []


@pytest.mark.postgres
@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (row-level security)")
def test_the_api_and_page_work_as_the_service_role_under_row_level_security(
    service_role, transactional_db, cloud
):
    from tests.conftest import world_build
    from tests.tenants.conftest import connected_as

    world = world_build()
    with connected_as(service_role):
        cloud.force_login(world.bob)  # owner of globex
        post(cloud, webhook_rule(name="globex rule"))
        cloud.force_login(world.alice)  # owner of acme
        made = post(cloud, webhook_rule())
        assert made.status_code == 201
        assert cloud.post(f"{RULES}{made.json()['id']}/test").status_code == 202
        assert [r["name"] for r in cloud.get(RULES).json()] == ["nightly failures"]
        (delivery,) = cloud.get("/api/v1/alerts/deliveries/").json()["results"]
        assert delivery["rule"]["name"] == "nightly failures"
        page = cloud.get("/alerts/").text
        assert "nightly failures" in page and "globex rule" not in page


def test_the_deliveries_list_costs_the_same_queries_for_one_notification_or_many(client, local_tenant):
    from django.test.utils import CaptureQueriesContext

    rule = post(client, webhook_rule()).json()
    client.post(f"{RULES}{rule['id']}/test")
    with CaptureQueriesContext(connection) as one:
        client.get("/api/v1/alerts/deliveries/")
    for _ in range(5):
        client.post(f"{RULES}{rule['id']}/test")
    with CaptureQueriesContext(connection) as many:
        assert len(client.get("/api/v1/alerts/deliveries/").json()["results"]) == 6
    assert len(many.captured_queries) == len(one.captured_queries)
