"""The Alerts page in Chromium, as OSS runs it (`manage.py serve`): under the Content Security Policy,
a rule made with the form shows its signing secret once, Send test is delivered by serve's own loop
to a webhook receiver on loopback, and the Deliveries list says so."""

from __future__ import annotations

import time

import orjson
import pytest
from playwright.sync_api import expect

from tests.alerts.receiver import webhook_receiver
from tests.alerts.test_delivery import verified
from tests.browser.conftest import ARTIFACTS
from tests.browser.test_csp_browser import check_still_clean, visit
from tests.browser.test_csp_browser import page as page  # the fixture, for this module
from tests.conftest import manage_env, scope_server

# The pages a browser draws are the same HTML on either database (tests/runs checks the HTML on both).
pytestmark = pytest.mark.database_agnostic


@pytest.fixture
def oss_url(transactional_db, local_tenant):
    with scope_server(manage_env(), "--no-follow") as url:
        yield url


def test_a_rule_made_on_the_page_sends_its_test_to_the_receiver(oss_url, page):
    with webhook_receiver() as receiver:
        visit(page, f"{oss_url}/alerts/")
        expect(page.get_by_text("No alert rules yet.")).to_be_visible()
        page.locator("#id_name").fill("nightly failures")
        page.locator("#id_condition").select_option("run_failed")
        page.locator("#id_run_id").fill("nightly-*")
        page.locator("#id_channel_kind").select_option("webhook")
        page.locator("#id_url").fill(receiver.url)
        page.get_by_role("button", name="Make rule").click()
        expect(page.get_by_text("this is the only time it is shown")).to_be_visible()
        secret = page.locator("#new-secret").input_value()
        assert secret.startswith("whsec_")
        check_still_clean(page, "the new rule's secret")

        page.get_by_role("button", name="Send test").click()
        expect(page.get_by_text("is on its way")).to_be_visible()
        assert receiver.arrived.wait(30), "serve's delivery loop sent nothing"
        deadline = time.monotonic() + 30
        while "delivered" not in page.locator(".delivery-status").first.inner_text():
            assert time.monotonic() < deadline, "the Deliveries list never said delivered"
            time.sleep(0.3)
            visit(page, f"{oss_url}/alerts/")
        expect(page.locator(".attempts").first).to_contain_text("HTTP 200")
        assert secret not in page.content()  # shown once, never again
        page.screenshot(path=str(ARTIFACTS / "alerts.png"), full_page=True)
    (request,) = receiver.requests
    assert verified(secret, request.headers, request.body)
    assert orjson.loads(request.body)["type"] == "test"
