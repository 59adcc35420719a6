"""One vocabulary: a run's result and length read the same in the history's table and chart, on the
run's page and in the commands' tables; the API's enum values stay as they are."""

import re
from io import StringIO

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db

RESULTS = {
    "run_clean": "clean",
    "run_crashed": "interrupted",
    "run_dirty": "clean",
    "run_failed": "failed",
    "run_flaky": "flaky",
    "run_same_ts": "flaky",
}


def text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_the_import_table_names_each_runs_result_in_the_historys_words(local_tenant, sample_archive):
    out = StringIO()
    call_command("ingest_archive", str(sample_archive), stdout=out, stderr=StringIO())
    lines = out.getvalue().splitlines()
    header = next(line for line in lines if line.startswith("run "))
    assert header.split() == ["run", "new", "events", "err", "warn", "info", "result"]
    shown = {line.split()[0]: line.split()[-1] for line in lines if line.split()[0] in RESULTS}
    assert shown == RESULTS
    assert "clean_with_flake" not in out.getvalue()


def test_the_api_keeps_its_enum_values(client, imported):
    run = client.get("/api/v1/runs/run_flaky/").json()
    assert (run["status"], run["outcome"]) == ("complete", "clean_with_flake")


def test_an_interrupted_runs_length_is_the_same_known_lower_bound_in_table_chart_and_page(client, imported):
    # run_crashed has no run_end: it lasted at least from run_start (12:00:00) to its last event (12:01:20.6).
    history = client.get("/").content.decode()
    row = re.search(r'<a class="run-link" href="/runs/run_crashed/">.*?</tr>', history, re.S).group(0)
    assert "≥ 1m 20.6s" in text(row)
    assert 'title="No run_end yet: the time from its start to its last event"' in row
    assert "<title>run_crashed: interrupted, ≥ 1m 20.6s</title>" in history
    page = client.get("/runs/run_crashed/").content.decode()
    facts = re.search(r'<dl class="facts">.*?</dl>', page, re.S).group(0)
    assert "Duration ≥ 1m 20.6s" in text(facts)


def test_a_finished_runs_length_is_its_duration_everywhere(client, imported):
    history = client.get("/").content.decode()
    row = re.search(r'<a class="run-link" href="/runs/run_flaky/">.*?</tr>', history, re.S).group(0)
    assert "8m 01.6s" in text(row) and "≥" not in row
    assert "<title>run_flaky: flaky, 8m 01.6s</title>" in history
    page = client.get("/runs/run_flaky/").content.decode()
    assert "Duration 8m 01.6s" in text(re.search(r'<dl class="facts">.*?</dl>', page, re.S).group(0))


def test_a_run_that_never_started_has_a_dash_for_its_length(client, imported):
    history = client.get("/").content.decode()
    row = re.search(r'<a class="run-link" href="/runs/run_headless/">.*?</tr>', history, re.S).group(0)
    assert '<td class="num"><span class="muted">—</span></td>' in row
    assert "<title>run_headless: interrupted, not started</title>" in history
