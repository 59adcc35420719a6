"""Every page on a 360 px wide phone: the document never scrolls sideways (wide tables and pictures
scroll inside their own cards, the header wraps). Screenshots in test-artifacts/narrow-*.png."""

from datetime import UTC, datetime

import pytest

from retention.services import retention_soft_delete_expired
from runs.models import Run
from tests.browser.conftest import ARTIFACTS
from tests.conftest import manage_env, scope_server

# What it checks is the browser's drawing, the same over either database.
pytestmark = pytest.mark.database_agnostic

PHONE = {"width": 360, "height": 800}
# One of each kind of page of OSS mode, with the demo archive imported.
OSS_PAGES = {
    "history": "/",
    "history-filtered": "/?status=failed&page_size=9999",
    "run-flaky": "/runs/run_flaky/",
    "run-failed": "/runs/run_failed/",
    "run-crashed-replay": "/runs/run_crashed/?at=5",
    "run-dirty": "/runs/run_dirty/",
    "nodes": "/nodes/",
    "node": "/nodes/integration-tests/",
    "retention": "/retention/",
    "run-deleted": "/runs/run_gone/",
    "not-found": "/runs/no_such_run/",
}


def overflow(page) -> dict:
    """The document's width and the window's; when the document is wider, the elements whose
    hiding alone brings it back within the window (the innermost last), to say what sticks out."""
    return page.evaluate(
        """() => {
            const fits = () => document.documentElement.scrollWidth <= window.innerWidth;
            const culprits = [];
            if (!fits()) {
                for (const el of document.querySelectorAll("body *")) {
                    const display = el.style.display;
                    el.style.display = "none";
                    if (fits()) culprits.push(el.tagName + "." + (el.getAttribute("class") || ""));
                    el.style.display = display;
                }
            }
            return {
                scrollWidth: document.documentElement.scrollWidth,
                innerWidth: window.innerWidth,
                culprits: culprits.slice(-4),
            };
        }"""
    )


def assert_fits(page, url: str, name: str) -> None:
    response = page.goto(url)
    assert response is not None and response.status < 500, url
    if response.status >= 400:
        # Chromium logs the page's own status (a 404, a 410 Gone, a 403) as a console error.
        status = f"status of {response.status}"
        page.console_errors[:] = [error for error in page.console_errors if status not in error]
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    measured = overflow(page)
    assert measured["scrollWidth"] <= measured["innerWidth"], (name, measured)


@pytest.fixture
def server_url(transactional_db, imported, local_tenant):
    # A run retention removed, for the page that says so.
    from tests.conftest import ingest_quietly, write_archive_run

    events = [
        {"ts": "2020-01-01T00:00:00.000Z", "event": "run_start", "run_id": "run_gone"},
        {"ts": "2020-01-01T00:00:01.000Z", "event": "run_end", "exit_code": 0},
    ]
    write_archive_run(imported, "run_gone", events)
    ingest_quietly(imported)
    # Only run_gone is that old: the demo runs are kept.
    retention_soft_delete_expired(
        tenant=local_tenant, actor="retention", now=datetime(2020, 12, 1, tzinfo=UTC)
    )
    assert not Run.objects.filter(run_id="run_gone").exists()
    with scope_server(manage_env(), "--no-follow") as url:
        yield url


def test_no_oss_page_is_wider_than_a_phone(server_url, browser_page):
    page = browser_page
    page.set_viewport_size(PHONE)
    for name, path in OSS_PAGES.items():
        assert_fits(page, f"{server_url}{path}", f"narrow-{name}")
    # The wide pictures are still there, scrolled inside their cards.
    page.goto(f"{server_url}/runs/run_failed/")
    dag = page.locator("#run-dag .scroll")
    assert dag.evaluate("(el) => el.scrollWidth > el.clientWidth")


def luminance(rgb: str) -> float:
    """Relative luminance (WCAG) of a computed `rgb(r, g, b)`."""
    channels = [int(c) / 255 for c in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3]]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(one: str, other: str) -> float:
    light, dark = sorted((luminance(one), luminance(other)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def computed(locator, prop: str) -> str:
    return locator.evaluate(f"(el) => getComputedStyle(el).{prop}")


def test_the_dark_theme_keeps_failures_red_and_readable(server_url, browser_page):
    page = browser_page
    page.emulate_media(color_scheme="dark")
    page.goto(f"{server_url}/runs/run_same_ts/")
    failed = page.evaluate(
        "() => getComputedStyle(document.documentElement).getPropertyValue('--failed').trim()"
    )
    assert failed == "#f85149"  # the dark theme's failure colour in static/scope.css
    FAILED = "rgb(248, 81, 73)"
    background = computed(page.locator("body"), "backgroundColor")
    if background == "rgba(0, 0, 0, 0)":
        background = computed(page.locator("html"), "backgroundColor")
    assert luminance(background) < 0.02, background  # a dark page
    card = computed(page.locator("#run-timeline"), "backgroundColor")
    assert luminance(card) < 0.03, card
    # Zero-length failed attempts: solid failure colour, readable on the dark card.
    bars = page.locator('.gantt rect.attempt[data-outcome="failed"]')
    assert bars.count() >= 2
    for bar in bars.all():
        assert computed(bar, "fill") == FAILED
    assert contrast(FAILED, card) >= 4.5
    page.locator("#run-timeline").screenshot(path=str(ARTIFACTS / "dark-timeline-same-ts.png"))
    # The failed node of the DAG, its word, and the badge of the run's result.
    page.goto(f"{server_url}/runs/run_failed/")
    node = page.locator('.dag g.node[data-node="api-routes"]')
    assert computed(node.locator(".box"), "stroke") == FAILED
    assert computed(node.locator(".state-word"), "fill") == FAILED
    badge = page.locator(".page-head .badge.v-failed")
    assert computed(badge, "color") == FAILED
    assert contrast(FAILED, computed(badge, "backgroundColor")) >= 4.5
    # Text and labels readable on the dark page.
    ink = computed(page.locator("h1"), "color")
    assert contrast(ink, background) >= 7
    label = computed(node.locator(".label"), "fill")
    assert contrast(label, computed(node.locator(".box"), "fill")) >= 4.5
    page.screenshot(path=str(ARTIFACTS / "dark-run-failed.png"), full_page=True)
    # Every OSS page, dark and narrow, still fits.
    page.set_viewport_size(PHONE)
    for name, path in OSS_PAGES.items():
        assert_fits(page, f"{server_url}{path}", f"dark-narrow-{name}")
