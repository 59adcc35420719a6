"""Status badges as Chromium draws them: made on the Badges page, red for a failed run, green for a
clean one, and gone once revoked."""

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ARTIFACTS
from tests.conftest import manage_env, scope_server

# The pages a browser draws are the same HTML on either database (tests/runs checks the HTML on both).
pytestmark = pytest.mark.database_agnostic

FAILED = (207, 34, 46)  # --failed in static/scope.css
CLEAN = (26, 127, 55)  # --clean


@pytest.fixture
def server_url(transactional_db, imported):
    with scope_server(manage_env(), "--no-follow") as url:
        yield url


def make_badge(page, server_url: str, pattern: str) -> str:
    page.goto(f"{server_url}/badges/")
    page.get_by_label("Run id pattern").fill(pattern)
    page.get_by_role("button", name="Make badge").click()
    page.wait_for_selector("#new-badge")
    return page.locator("#new-badge").input_value()


def drawn_status_colour(page) -> tuple[int, int, int]:
    """The colour of the badge preview's status half, as drawn: the image's pixels through a canvas."""
    # Not wait_for_function: its polling compiles the expression in the page, which the policy's
    # script-src (no 'unsafe-eval') refuses whenever the first look finds the image still loading.
    expect(page.locator(".badge-preview img")).to_have_js_property("complete", True)
    rgba = page.evaluate(
        """() => {
            const img = document.querySelector('.badge-preview img');
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            const context = canvas.getContext('2d');
            context.drawImage(img, 0, 0);
            // Near the right edge, mid-height: the status half, off its text.
            return Array.from(context.getImageData(img.naturalWidth - 3, 3, 1, 1).data);
        }"""
    )
    return tuple(rgba[:3])


def close_to(colour: tuple[int, int, int], expected: tuple[int, int, int]) -> bool:
    # The badge's light gradient overlay shifts each channel by a few units.
    return all(abs(a - b) <= 24 for a, b in zip(colour, expected, strict=True))


def test_a_failed_runs_badge_is_red_and_a_clean_runs_green(server_url, browser_page):
    page = browser_page
    failed_url = make_badge(page, server_url, "run_failed")
    failed = drawn_status_colour(page)
    page.locator(".badge-preview").screenshot(path=str(ARTIFACTS / "badge-run-failed.png"))
    assert close_to(failed, FAILED), failed

    clean_url = make_badge(page, server_url, "run_clean")
    clean = drawn_status_colour(page)
    page.locator(".badge-preview").screenshot(path=str(ARTIFACTS / "badge-run-clean.png"))
    assert close_to(clean, CLEAN), clean

    # The badge itself, opened as a document: the SVG and nothing that runs.
    response = page.goto(failed_url)
    assert response.status == 200 and response.headers["content-type"] == "image/svg+xml"
    assert page.locator("svg title").text_content() == "run_failed: failed"
    assert page.locator("script").count() == 0
    assert page.goto(clean_url).status == 200


def test_a_revoked_badge_url_is_404(server_url, browser_page):
    page = browser_page
    url = make_badge(page, server_url, "run_*")
    assert page.goto(url).status == 200
    page.goto(f"{server_url}/badges/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke the badge for run_*").click()
    page.wait_for_selector("text=revoked")
    # Asked afresh: the browser may keep the badge for the minute its Cache-Control allows.
    assert page.request.get(url).status == 404
    assert page.request.get(f"{url}?format=json").status == 404
