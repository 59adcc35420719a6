"""`manage.py serve`: the pages and the API over real HTTP from daphne, loopback only in OSS mode."""

import json
import subprocess
import sys
import time
import urllib.request
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.conftest import PROJECT, manage, manage_env
from tests.servers import free_port


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.com", "scope.internal"])
def test_oss_refuses_to_listen_beyond_loopback(host):
    with pytest.raises(CommandError, match="loopback only") as refused:
        call_command("serve", "--host", host, stdout=StringIO())
    assert repr(host) in str(refused.value)
    assert "127.0.0.1" in str(refused.value)


@pytest.mark.django_db
def test_an_operator_sees_the_refusal_and_a_failing_exit_code():
    finished = manage("serve", "--host", "0.0.0.0")
    assert finished.returncode != 0
    assert "OSS mode serves on loopback only" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_a_port_out_of_range_is_refused():
    with pytest.raises(CommandError, match="--port"):
        call_command("serve", "--port", "70000", stdout=StringIO())


@pytest.mark.django_db
def test_cloud_mode_asked_for_on_the_command_line_boots_as_cloud():
    env = {k: v for k, v in manage_env().items() if k != "DJANGO_SECRET_KEY"}
    finished = manage("serve", "--mode", "cloud", env=env)
    assert finished.returncode != 0
    # Settings were loaded again in cloud mode, which names what it lacks.
    assert "DJANGO_SECRET_KEY is not set" in finished.stderr


def fetch(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


def test_serve_answers_pages_api_and_static_files(transactional_db, imported):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(PROJECT / "manage.py"), "serve", "--port", str(port), "--no-follow"],
        env=manage_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _type, html = fetch(f"{base}/")
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "serve did not answer within 30 s"
                time.sleep(0.2)
        assert status == 200
        assert 'href="/runs/run_failed/"' in html
        status, content_type, body = fetch(f"{base}/api/v1/runs/?outcome=failed")
        assert content_type == "application/json"
        assert [row["run_id"] for row in json.loads(body)["results"]] == ["run_failed"]
        status, content_type, css = fetch(f"{base}/static/scope.css")
        assert status == 200 and content_type.startswith("text/css") and ".dag" in css
        status, _type, script = fetch(f"{base}/static/replay.js")
        assert "replaceState" in script
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=20)
    assert f"on http://127.0.0.1:{port}/" in output
