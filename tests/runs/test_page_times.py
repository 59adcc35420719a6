"""Times on the pages: labelled with their zone, the year only when it is not the current one, and
in the reader's own zone once the header's local-time toggle has set its cookie."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from retention.services import retention_soft_delete_expired
from runs.templatetags.scope import TIME_ZONE_COOKIE
from tests.conftest import ingest_quietly, write_archive_run

pytestmark = pytest.mark.django_db

TIME = re.compile(r'<time datetime="([^"]+)" title="([^"]+)">([^<]+)</time>')


def page(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


def row_of(html: str, run_id: str) -> str:
    found = re.search(rf'<a class="run-link" href="/runs/{run_id}/">.*?</tr>', html, re.S)
    assert found, run_id
    return found.group(0)


def times(html: str) -> list[tuple[str, str, str]]:
    """Each `<time>` of the html: (datetime, title, text)."""
    return TIME.findall(html)


def one_run(root, run_id: str, started: datetime) -> None:
    def ts(seconds: float) -> str:
        return (started + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")[:-6] + "Z"

    graph = {"version": 1, "nodes": [{"id": "build", "deps": []}]}
    write_archive_run(
        root,
        run_id,
        [
            {"ts": ts(0), "event": "run_start", "run_id": run_id, "graph": graph},
            {
                "ts": ts(0),
                "event": "transition",
                "node": "build",
                "from": "pending",
                "to": "running",
                "attempt": 1,
            },
            {
                "ts": ts(2.25),
                "event": "node_attempt",
                "node": "build",
                "attempt": 1,
                "ok": True,
                "duration_s": 2.25,
                "exit_code": 0,
            },
            {
                "ts": ts(2.25),
                "event": "transition",
                "node": "build",
                "from": "running",
                "to": "done",
                "attempt": 1,
            },
            {"ts": ts(3), "event": "run_end", "exit_code": 0},
        ],
    )


@pytest.fixture
def dated_runs(local_tenant, tmp_path):
    """A run started on June 15 of this year at 10:00:00 UTC, and one a year before."""
    year = timezone.now().year
    one_run(tmp_path, "run_this_year", datetime(year, 6, 15, 10, 0, 0, tzinfo=UTC))
    one_run(tmp_path, "run_last_year", datetime(year - 1, 6, 15, 10, 0, 0, tzinfo=UTC))
    ingest_quietly(tmp_path)
    return year


def test_times_are_labelled_utc_with_the_year_only_when_it_is_not_this_one(client, dated_runs):
    year = dated_runs
    html = page(client, "/")
    assert times(row_of(html, "run_this_year")) == [
        (f"{year}-06-15T10:00:00.000Z", f"{year}-06-15 10:00:00.000 UTC", "Jun 15, 10:00:00 UTC")
    ]
    assert times(row_of(html, "run_last_year")) == [
        (
            f"{year - 1}-06-15T10:00:00.000Z",
            f"{year - 1}-06-15 10:00:00.000 UTC",
            f"Jun 15, {year - 1}, 10:00:00 UTC",
        )
    ]
    # The toggle is offered, off: times are in UTC.
    assert re.search(r'<button type="button" class="time-toggle" id="time-toggle" aria-pressed="false"', html)


def test_the_run_page_labels_its_start_and_names_the_zone_of_its_event_log(client, dated_runs):
    year = dated_runs
    html = page(client, "/runs/run_last_year/")
    head = re.search(r'<dl class="facts">.*?</dl>', html, re.S).group(0)
    assert times(head)[0][2] == f"Jun 15, {year - 1}, 10:00:00 UTC"
    assert '<th scope="col">Time (UTC)</th>' in html
    log_times = [
        text
        for _iso, _title, text in times(re.search(r'<table class="log">.*?</table>', html, re.S).group(0))
    ]
    assert log_times == ["10:00:00.000", "10:00:00.000", "10:00:02.250", "10:00:02.250", "10:00:03.000"]


def test_the_node_page_labels_each_runs_start(client, dated_runs):
    html = page(client, "/nodes/build/")
    labels = [text for _iso, _title, text in times(html)]
    assert labels == ["Jun 15, 10:00:00 UTC", f"Jun 15, {dated_runs - 1}, 10:00:00 UTC"]


def test_local_time_from_the_cookie_on_every_page_with_the_instant_kept_in_utc(client, dated_runs):
    year = dated_runs
    client.cookies[TIME_ZONE_COOKIE] = "Asia/Kolkata"  # UTC+5:30 all year, abbreviated IST
    html = page(client, "/")
    assert times(row_of(html, "run_this_year")) == [
        (f"{year}-06-15T10:00:00.000Z", f"{year}-06-15 10:00:00.000 UTC", "Jun 15, 15:30:00 IST")
    ]
    assert re.search(
        r'id="time-toggle" aria-pressed="true" data-cookie="kahn_time_zone" data-zone="Asia/Kolkata"', html
    )
    run = page(client, "/runs/run_this_year/")
    assert '<th scope="col">Time (Asia/Kolkata)</th>' in run
    assert "Jun 15, 15:30:00 IST" in run and "15:30:02.250" in run
    assert "Jun 15, 15:30:00 IST" in page(client, "/nodes/build/")


def test_a_zone_without_an_abbreviation_is_written_as_its_offset(client, dated_runs):
    client.cookies[TIME_ZONE_COOKIE] = "Asia/Dubai"  # tzdata calls it "+04"
    assert "Jun 15, 14:00:00 UTC+4</time>" in page(client, "/")


def test_a_local_time_can_fall_on_another_day_and_year(client, local_tenant, tmp_path):
    year = timezone.now().year
    one_run(tmp_path, "run_new_year", datetime(year, 1, 1, 2, 0, 0, tzinfo=UTC))
    ingest_quietly(tmp_path)
    client.cookies[TIME_ZONE_COOKIE] = "America/New_York"
    assert f"Dec 31, {year - 1}, 21:00:00 EST</time>" in page(client, "/")


@pytest.mark.parametrize(
    "value", ["Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime", "Europe", "", "<b>"]
)
def test_a_cookie_that_names_no_zone_leaves_times_in_utc(client, dated_runs, value):
    client.cookies[TIME_ZONE_COOKIE] = value
    html = page(client, "/")
    assert "Jun 15, 10:00:00 UTC</time>" in html
    assert 'aria-pressed="false"' in html and "<b>" not in html


def test_every_page_offers_the_toggle_and_loads_its_script(client, dated_runs):
    for url in ("/", "/runs/run_this_year/", "/nodes/", "/nodes/build/", "/retention/"):
        html = page(client, url)
        assert 'id="time-toggle"' in html, url
        assert re.search(r'<script src="/static/time_zone\.js" defer></script>', html), url


def test_the_retention_pages_label_when_a_run_was_deleted(client, dated_runs, local_tenant):
    year = dated_runs
    deleted_at = datetime(year + 1, 3, 1, 9, 30, tzinfo=UTC)
    retention_soft_delete_expired(tenant=local_tenant, actor="retention test", now=deleted_at)
    history = page(client, "/retention/")
    assert (
        f"{year + 1}-03-01T09:30:00.000Z",
        f"{year + 1}-03-01 09:30:00.000 UTC",
        f"Mar 1, {year + 1}, 09:30 UTC",
    ) in times(history)
    client.cookies[TIME_ZONE_COOKIE] = "Europe/Paris"
    gone = client.get("/runs/run_this_year/")
    assert gone.status_code == 410
    assert f'On <time datetime="{year + 1}-03-01T09:30:00.000Z"' in gone.content.decode()
    assert f"Mar 1, {year + 1}, 10:30 CET</time>, by retention test" in gone.content.decode()


def chart_times(html: str) -> list[tuple[str, str]]:
    chart = re.search(r'<figure class="chart card">.*?</figure>', html, re.S).group(0)
    return re.findall(r'<text class="tick time" x="[\d.]+" y="\d+" text-anchor="(\w+)">([^<]+)</text>', chart)


def test_the_history_chart_has_a_time_axis_in_the_readers_zone(client, dated_runs):
    year = dated_runs
    html = page(client, "/")
    # Oldest on the left: last year's run starts the axis, this year's ends it.
    assert chart_times(html) == [("start", f"Jun 15, {year - 1}, 10:00"), ("end", "Jun 15, 10:00")]
    assert "over the time each started (UTC)</figcaption>" in html
    client.cookies[TIME_ZONE_COOKIE] = "Asia/Kolkata"
    html = page(client, "/")
    assert chart_times(html) == [("start", f"Jun 15, {year - 1}, 15:30"), ("end", "Jun 15, 15:30")]
    assert "over the time each started (Asia/Kolkata)</figcaption>" in html


def test_a_long_history_labels_five_runs_spread_over_the_axis(client, many_runs):
    html = page(client, "/?page_size=25")
    labels = chart_times(html)
    assert [anchor for anchor, _text in labels] == ["start", "middle", "middle", "middle", "end"]
    # Each names a start time the table lists.
    listed = {text for _iso, _title, text in times(html)}
    assert all(any(started.startswith(text) for started in listed) for _anchor, text in labels)
