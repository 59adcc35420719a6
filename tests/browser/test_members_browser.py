"""The Members page in a real browser, served as cloud mode is deployed (`manage.py serve` as the
service role under row-level security): an owner invites someone, changes a role, is asked before
removing someone (and nothing happens when she says no), and reads what changed.

Nothing here touches the database once the browser runs (see test_keys_browser.py): the page is
the witness.
"""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.test_keys_browser import alice_session, cloud_url  # noqa: F401 (fixtures)
from tests.tenants.conftest import POSTGRES_ONLY
from tests.tenants.conftest import service_role as service_role  # the fixture, for this directory

pytestmark = [*POSTGRES_ONLY, pytest.mark.django_db(transaction=True)]


def test_an_owner_invites_changes_a_role_and_removes_after_confirming(
    cloud_url,  # noqa: F811
    world,
    alice_session,  # noqa: F811
    browser_page,
):
    page = browser_page
    page.context.add_cookies([{"name": "sessionid", "value": alice_session, "url": cloud_url}])
    page.goto(f"{cloud_url}/")
    page.get_by_role("link", name="Members").click()
    expect(page.locator("h1")).to_have_text("Members")
    expect(page.get_by_role("link", name="Members")).to_have_attribute("aria-current", "page")
    rows = page.locator("table.members tbody tr")
    expect(rows).to_have_count(2)
    # Alice is acme's only owner: her row offers no Remove.
    alice_row = rows.filter(has_text="alice@example.com")
    expect(alice_row).to_contain_text("last owner")
    expect(alice_row.get_by_role("button", name=re.compile("^Remove"))).to_have_count(0)

    page.get_by_label("Email").fill("dave@acme.example")
    page.locator("form.member-form select[name=role]").select_option("admin")
    page.get_by_role("button", name="Invite").click()
    expect(page.locator(".page-notice")).to_contain_text("Invited dave@acme.example as admin")
    dave_row = rows.filter(has_text="dave@acme.example")
    expect(dave_row).to_contain_text("invited")

    carol_row = rows.filter(has_text="carol@example.com")
    carol_row.get_by_label("Role of carol@example.com").select_option("admin")
    carol_row.get_by_role("button", name="Change role of carol@example.com").click()
    expect(page.locator(".page-notice")).to_contain_text("carol@example.com (user")
    expect(rows.filter(has_text="carol@example.com").get_by_label("Role of carol@example.com")).to_have_value(
        "admin"
    )

    # Asked first; saying no removes no one.
    page.once("dialog", lambda dialog: dialog.dismiss())
    rows.filter(has_text="carol@example.com").get_by_role("button", name="Remove carol@example.com").click()
    expect(rows).to_have_count(3)
    page.once("dialog", lambda dialog: dialog.accept())
    rows.filter(has_text="carol@example.com").get_by_role("button", name="Remove carol@example.com").click()
    expect(page.locator(".page-notice")).to_contain_text("Removed carol@example.com")
    expect(rows).to_have_count(2)

    changes = page.locator("table.member-changes tbody")
    expect(changes).to_contain_text("invited dave@acme.example")
    expect(changes).to_contain_text("changed the role of carol@example.com")
    expect(changes).to_contain_text("from member to admin")
    expect(changes).to_contain_text("removed carol@example.com")
