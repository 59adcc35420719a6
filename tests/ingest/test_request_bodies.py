"""Request bodies (SPEC section 5, ingest.bodies): gzip to the same limit, other encodings and
multipart refused, a body that trickles in dropped, and a request without valid credentials refused
before its body is read, behind both servers (`serve`: daphne; `serve --http-workers`: gunicorn),
with the server's memory where it was after a 600 MB body."""

from __future__ import annotations

import gzip
import itertools
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import pytest

from ingest.bodies import admission_refusal
from runs.models import Event
from tenants.context import tenant_scope
from tenants.models import Tenant
from tenants.services import api_key_create, api_key_revoke
from tests.conftest import manage_env, world_build
from tests.ingest.http_wire import Answer, memory_kib, process_tree, send
from tests.servers import Served, ServerDidNotStart, free_port, served
from tests.tenants.conftest import POSTGRES_ONLY, cloud_server_env
from tests.tenants.conftest import cloud as cloud  # the fixture, for this module
from tests.tenants.conftest import service_role as service_role  # the fixture, for this module

T = "2026-11-20T10:00:00.000Z"
MIB = 1024 * 1024


def ndjson(*events: dict) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


def start(run_id: str) -> bytes:
    return ndjson({"ts": T, "event": "run_start", "run_id": run_id})


def error_of(body: dict) -> dict:
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"]), body
    return body["error"]


# ---------------------------------------------------------------- in this process: forms and encodings


def post(client, run_id: str, body: bytes, *, content_type="application/x-ndjson", **headers):
    return client.post(f"/api/v1/runs/{run_id}/events", data=body, content_type=content_type, headers=headers)


@pytest.mark.django_db
def test_a_gzip_body_is_inflated_and_stored(client, local_tenant):
    events = ndjson(
        {"ts": T, "event": "run_start", "run_id": "run_gz"},
        {"ts": T, "event": "checkpoint", "note": "x" * 2000},
    )
    response = post(client, "run_gz", gzip.compress(events), **{"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == 2
    graph = {"version": 1, "nodes": [{"id": "a", "deps": []}]}
    response = client.put(
        "/api/v1/runs/run_gz/graph",
        data=gzip.compress(orjson.dumps(graph)),
        content_type="application/json",
        headers={"Content-Encoding": "GZIP"},
    )
    assert (response.status_code, response.json()["written"]) == (200, True)
    # Several gzip members, one after another, are one body (RFC 1952).
    members = gzip.compress(ndjson({"ts": T, "event": "checkpoint"})) * 2
    response = post(client, "run_gz", members, **{"Content-Encoding": "gzip"})
    assert (response.status_code, response.json()["next_seq"]) == (200, 4), response.content


@pytest.mark.django_db
def test_a_zip_bomb_is_413_and_never_inflated_whole(client, local_tenant):
    # 200 MiB of spaces pack into a fraction of a MiB: a small body that would inflate to 200
    # times the limit.
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b" " * MIB
    bomb = b"".join(packer.compress(block) for _ in range(200)) + packer.flush()
    assert len(bomb) < MIB
    response = post(client, "run_bomb", bomb, **{"Content-Encoding": "gzip"})
    assert response.status_code == 413
    error = error_of(response.json())
    assert (error["code"], error["details"]) == ("batch_too_large", {"max_bytes": MIB})
    assert "inflates past" in error["message"]
    # Just over the limit once inflated is refused as well; just under is read (and then judged).
    over = gzip.compress(start("run_bomb") + b" " * MIB)
    assert post(client, "run_bomb", over, **{"Content-Encoding": "gzip"}).status_code == 413
    under = gzip.compress(start("run_bomb") + b" " * (MIB - 200))
    assert post(client, "run_bomb", under, **{"Content-Encoding": "gzip"}).status_code == 200
    assert Event.objects.filter(run__run_id="run_bomb").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body, reason",
    [
        (b"not gzip at all\n", "incorrect header check"),
        (gzip.compress(start("run_x"))[:-9], "ends early"),
        (gzip.compress(start("run_x")) + b"trailing", "incorrect header check"),
        (gzip.compress(start("run_x"))[:-4] + b"\x00\x00\x00\x00", "incorrect length"),
    ],
    ids=["not-gzip", "truncated", "trailing-bytes", "wrong-length"],
)
def test_bad_gzip_data_is_400(client, local_tenant, body, reason):
    response = post(client, "run_x", body, **{"Content-Encoding": "gzip"})
    assert response.status_code == 400
    error = error_of(response.json())
    assert error["code"] == "invalid_body"
    assert error["message"] == "the body is not valid gzip data"
    assert reason in error["details"]["errors"][0]["message"]
    assert not Event.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("encoding", ["br", "deflate", "compress", "zstd", "gzip, gzip", "gzip, br"])
def test_other_content_encodings_are_415_naming_gzip(client, local_tenant, encoding):
    response = post(client, "run_x", start("run_x"), **{"Content-Encoding": encoding})
    assert response.status_code == 415
    error = error_of(response.json())
    assert error["code"] == "unsupported_media_type"
    assert "gzip" in error["message"] and encoding in error["message"]
    assert error["details"]["accepted"] == ["gzip", "identity"]
    assert not Event.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/runs/run_x/events", "/api/v1/runs/run_x/graph"])
def test_multipart_bodies_are_415_naming_the_accepted_types(client, local_tenant, path):
    method = "POST" if path.endswith("events") else "PUT"
    body = b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nx\r\n--b--\r\n'
    response = client.generic(method, path, body, content_type="multipart/form-data; boundary=b")
    assert response.status_code == 415
    error = error_of(response.json())
    assert error["code"] == "unsupported_media_type"
    assert "multipart/form-data" in error["message"] and "application/json" in error["message"]
    assert not Event.objects.exists()


# ---------------------------------------------------------------- cloud: credentials before the body


@pytest.mark.django_db
def test_cloud_admits_a_body_on_a_valid_key_or_session_and_refuses_anything_else(cloud, world, settings):
    settings.KAHN_BODY_CREDENTIALS = "tenants.middleware.cloud_credentials_refusal"
    _, key = api_key_create(tenant=world.acme, name="producer")
    revoked, revoked_key = api_key_create(tenant=world.acme, name="old")
    api_key_revoke(api_key=revoked)
    cloud.force_login(world.alice)
    session = f"{settings.SESSION_COOKIE_NAME}={cloud.cookies[settings.SESSION_COOKIE_NAME].value}"
    path = "/api/v1/runs/run_x/events"

    def admission(**headers: str):
        return admission_refusal("POST", path, {"transfer-encoding": "chunked", **headers})

    assert admission(authorization=f"Bearer {key}") is None
    assert admission(cookie=session) is None
    for headers, code in [
        ({"authorization": "Bearer kahn_live_sk_acme_forged"}, "invalid_api_key"),
        ({"authorization": f"Bearer {revoked_key}"}, "invalid_api_key"),
        ({"authorization": "Bearer kahn_live_sk_acme_forged", "cookie": session}, "invalid_api_key"),
        ({}, "not_authenticated"),
        ({"cookie": f"{settings.SESSION_COOKIE_NAME}=forged"}, "not_authenticated"),
    ]:
        refusal = admission(**headers)
        assert refusal is not None, headers
        assert (refusal.status_code, orjson.loads(refusal.content)["error"]["code"]) == (401, code)
        assert refusal["WWW-Authenticate"].startswith("Bearer")
    # A body declared no larger than may be read anyway is left to the request's own check; pages
    # are the session's and the form's to judge.
    small = {"content-length": "65536", "authorization": "Bearer kahn_live_sk_acme_forged"}
    assert admission_refusal("POST", path, small) is None
    assert admission_refusal("POST", "/keys/", {"transfer-encoding": "chunked"}) is None
    large = {**small, "content-length": "65537"}
    assert admission_refusal("POST", path, large).status_code == 401


# ---------------------------------------------------------------- real servers


def tree_memory(pid: int) -> tuple[int, int]:
    """Resident now and most ever resident (KiB), summed over the serving processes."""
    processes = process_tree(pid)
    return memory_kib(processes, "VmRSS"), memory_kib(processes, "VmHWM")


def six_hundred_mb() -> Iterator[bytes]:
    """600 MiB of body, made as it is sent: the same 64 KiB over and over."""
    return itertools.repeat(b"x" * 65536, 600 * 16)


def trickle(total: int) -> Iterator[bytes]:
    """A body that arrives a byte every tenth of a second."""
    for _ in range(total):
        time.sleep(0.1)
        yield b"{"


@contextmanager
def serving(env: dict[str, str], *args: str) -> Iterator[Served]:
    try:
        with served(env, *args) as server:
            try:
                yield server
            finally:
                # Shown with a failing test's output: the server's own account of what went wrong.
                print(f"--- manage.py serve {' '.join(args)} ---\n{server.output()}")
    except ServerDidNotStart as failure:
        pytest.fail(str(failure))


def assert_memory_kept_after_a_huge_body(server: Served, path: str, headers: dict, status: int) -> Answer:
    """Sends 600 MiB, chunked, to `path`; the server answers `status` early and keeps its memory."""
    # Warm up: what the first requests of a process load (code, connections) is not what is measured.
    for _ in range(3):
        send(server.url, "POST", path, [b"x" * 70_000], headers)
    before = tree_memory(server.pid)
    answer = send(server.url, "POST", path, six_hundred_mb(), headers, hostile=True)
    after = tree_memory(server.pid)
    assert answer.status == status, answer
    # A client that goes on sending after the answer finds the connection closed: what it took is
    # what the socket buffers held, of which the server read next to none.
    assert answer.body_bytes_sent < 64 * MIB, answer.body_bytes_sent
    grown_kib, peak_grown_kib = after[0] - before[0], after[1] - before[1]
    assert grown_kib < 4 * 1024, f"resident memory grew by {grown_kib} KiB"
    assert peak_grown_kib < 4 * 1024, f"peak resident memory grew by {peak_grown_kib} KiB"
    return answer


# OSS mode: no credentials to check, and the limit holds.


@pytest.mark.django_db(transaction=True)
def test_daphne_reads_no_more_than_the_limit_of_a_600_mb_body(local_tenant):
    with serving(manage_env(), "--no-follow") as server:
        headers = {"Content-Type": "application/x-ndjson"}
        answer = assert_memory_kept_after_a_huge_body(server, "/api/v1/runs/run_big/events", headers, 413)
        assert error_of(answer.json())["code"] == "batch_too_large"
        # A page's form is held to the same limit.
        page = send(server.url, "POST", "/", six_hundred_mb(), {"Content-Type": "text/plain"})
        assert page.status == 413
        # Bodies within the limit still arrive whole, declared or chunked.
        declared = send(
            server.url,
            "POST",
            "/api/v1/runs/run_ok/events",
            [start("run_ok")],
            {**headers, "Content-Length": str(len(start("run_ok")))},
            chunked=False,
        )
        assert (declared.status, declared.json()["accepted"]) == (200, 1)
        checkpoint = ndjson({"ts": T, "event": "checkpoint", "note": "y" * 3000})
        chunked = send(server.url, "POST", "/api/v1/runs/run_ok/events", [checkpoint] * 300, headers)
        assert (chunked.status, chunked.json()["accepted"]) == (200, 300)
        # Invited to send its body once it is admitted, or refused without the invitation.
        declared_headers = {**headers, "Expect": "100-continue", "Content-Length": str(len(start("run_ok2")))}
        invited = send(
            server.url,
            "POST",
            "/api/v1/runs/run_ok2/events",
            [start("run_ok2")],
            declared_headers,
            chunked=False,
        )
        assert (invited.status, invited.continued) == (200, True)
        too_large = {**declared_headers, "Content-Length": str(2 * MIB)}
        refused = send(
            server.url, "POST", "/api/v1/runs/run_ok2/events", six_hundred_mb(), too_large, chunked=False
        )
        assert (refused.status, refused.continued) == (413, False)


@pytest.mark.django_db(transaction=True)
def test_daphne_drops_a_body_that_trickles_in(local_tenant):
    env = manage_env(KAHN_REQUEST_BODY_TIMEOUT="1.5")
    with serving(env, "--no-follow") as server:
        headers = {"Content-Type": "application/x-ndjson", "Content-Length": "1000"}
        answer = send(
            server.url, "POST", "/api/v1/runs/run_slow/events", trickle(1000), headers, chunked=False
        )
        assert answer.status == 408
        error = error_of(answer.json())
        assert error["code"] == "request_timeout"
        assert "1.5 seconds" in error["message"]
        assert answer.body_bytes_sent < 1000


# Cloud mode, behind both servers: credentials first.

SERVERS = {
    "daphne": lambda: ("--host", "127.0.0.1"),
    "gunicorn": lambda: ("--host", "127.0.0.1", "--http-workers", "1", "--ws-port", str(free_port())),
}


@pytest.fixture
def producer(service_role) -> tuple[Tenant, str]:
    """acme, and a key of its producer."""
    world = world_build()
    _, key = api_key_create(tenant=world.acme, name="producer")
    return world.acme, key


def events_of(tenant: Tenant, run_id: str) -> int:
    with tenant_scope(tenant):
        return Event.objects.filter(run__run_id=run_id).count()


def cloud_env(service_role: str, **extra: str) -> dict[str, str]:
    return cloud_server_env(service_role, KAHN_CACHE_KEY_PREFIX=f"kahn-test-{uuid.uuid4().hex}", **extra)


@pytest.mark.parametrize("server_kind", SERVERS)
@POSTGRES_ONLY[0]
@POSTGRES_ONLY[1]
@pytest.mark.django_db(transaction=True)
def test_an_unauthenticated_600_mb_body_is_refused_unread(service_role, producer, server_kind):
    with serving(cloud_env(service_role), *SERVERS[server_kind]()) as server:
        path = "/api/v1/runs/run_big/events"
        forged = {"Content-Type": "application/x-ndjson", "Authorization": "Bearer kahn_live_sk_acme_forged"}
        answer = assert_memory_kept_after_a_huge_body(server, path, forged, 401)
        error = error_of(answer.json())
        assert error["code"] == "invalid_api_key"
        assert answer.headers["www-authenticate"].startswith("Bearer")
        # No credentials at all: the answer the API gives any request without them.
        anonymous = send(server.url, "POST", path, six_hundred_mb(), {"Content-Type": "application/x-ndjson"})
        assert (anonymous.status, error_of(anonymous.json())["code"]) == (401, "not_authenticated")
        if server_kind == "daphne":
            # A client that waits to be invited to send its body is refused without the invitation.
            waiting = send(server.url, "POST", path, six_hundred_mb(), {**forged, "Expect": "100-continue"})
            assert (waiting.status, waiting.continued) == (401, False)
        # Refused before anything else about the body is judged.
        multipart = send(
            server.url, "POST", path, [b"--b--"], {**forged, "Content-Type": "multipart/form-data"}
        )
        assert multipart.status == 401


@pytest.mark.parametrize("server_kind", SERVERS)
@POSTGRES_ONLY[0]
@POSTGRES_ONLY[1]
@pytest.mark.django_db(transaction=True)
def test_a_producer_posts_declared_chunked_and_gzip_bodies(service_role, producer, server_kind):
    tenant, producer_key = producer
    with serving(cloud_env(service_role), *SERVERS[server_kind]()) as server:
        headers = {"Content-Type": "application/x-ndjson", "Authorization": f"Bearer {producer_key}"}
        path = "/api/v1/runs/run_wire/events"
        declared = send(
            server.url,
            "POST",
            path,
            [start("run_wire")],
            {**headers, "Content-Length": str(len(start("run_wire")))},
            chunked=False,
        )
        assert (declared.status, declared.json()["next_seq"]) == (200, 1), declared
        checkpoint = ndjson({"ts": T, "event": "checkpoint", "note": "y" * 3000})
        chunked = send(server.url, "POST", path, [checkpoint] * 300, headers)
        assert (chunked.status, chunked.json()["next_seq"]) == (200, 301), chunked
        packed = gzip.compress(checkpoint * 300)
        pieces = [packed[i : i + 4096] for i in range(0, len(packed), 4096)]
        inflated = send(server.url, "POST", path, pieces, {**headers, "Content-Encoding": "gzip"})
        assert (inflated.status, inflated.json()["next_seq"]) == (200, 601), inflated
        bomb = send(
            server.url,
            "POST",
            path,
            [gzip.compress(b" " * 50 * MIB)],
            {**headers, "Content-Encoding": "gzip"},
        )
        assert (bomb.status, error_of(bomb.json())["code"]) == (413, "batch_too_large")
        over = send(server.url, "POST", path, [checkpoint] * 400, headers)
        assert (over.status, error_of(over.json())["code"]) == (413, "batch_too_large")
        encoded = send(server.url, "POST", path, [b"x"], {**headers, "Content-Encoding": "br"})
        assert (encoded.status, error_of(encoded.json())["code"]) == (415, "unsupported_media_type")
        multipart = send(
            server.url, "POST", path, [b"--b--"], {**headers, "Content-Type": "multipart/form-data"}
        )
        assert (multipart.status, error_of(multipart.json())["code"]) == (415, "unsupported_media_type")
        assert events_of(tenant, "run_wire") == 601
        # The producer's own 600 MB is cut off at the limit, and the server keeps its memory.
        answer = assert_memory_kept_after_a_huge_body(server, path, headers, 413)
        assert error_of(answer.json())["code"] == "batch_too_large"


@pytest.mark.parametrize("server_kind", SERVERS)
@POSTGRES_ONLY[0]
@POSTGRES_ONLY[1]
@pytest.mark.django_db(transaction=True)
def test_a_producer_body_that_trickles_in_is_dropped(service_role, producer, server_kind):
    tenant, producer_key = producer
    env = cloud_env(service_role, KAHN_REQUEST_BODY_TIMEOUT="1.5")
    with serving(env, *SERVERS[server_kind]()) as server:
        headers = {
            "Content-Type": "application/x-ndjson",
            "Authorization": f"Bearer {producer_key}",
            "Content-Length": "1000",
        }
        answer = send(
            server.url, "POST", "/api/v1/runs/run_slow/events", trickle(1000), headers, chunked=False
        )
        assert answer.status == 408, answer
        assert error_of(answer.json())["code"] == "request_timeout"
        assert answer.body_bytes_sent < 1000
        assert events_of(tenant, "run_slow") == 0
