"""Archives in S3: `ingest_archive s3://bucket/prefix` and `serve`'s follower, against a real
S3-compatible server on loopback (moto in server mode, in this process's threads)."""

import itertools
import json
import logging
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from io import StringIO
from pathlib import Path

import boto3
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from moto.server import ThreadedMotoServer

from ingest import s3_source
from runs.models import Diagnostic, Event, Run
from tests.conftest import SAMPLE_ARCHIVE, manage, manage_env, write_archive_run
from tests.ingest.test_ingest_archive import RUN_FLAKY_ROW, row_of
from tests.servers import free_port, served

pytestmark = pytest.mark.django_db

KEY_ID, SECRET = "testing", "testing"
bucket_names = itertools.count()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """moto's S3 on a free loopback port, for the module's tests; its endpoint URL."""
    # The server's access log would bury a failure's output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_env(endpoint: str, key_id: str = KEY_ID, secret: str = SECRET) -> dict[str, str]:
    """The standard AWS environment pointing at the loopback server, and at no file of this machine."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": key_id,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        # Never ask an instance's metadata service for credentials: nothing but loopback is reached.
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A client of the loopback S3, with the import's environment set to reach it, and a new bucket."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_env(s3_server).items():
        monkeypatch.setenv(name, value)
    client = boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )
    client.bucket = f"kahn-archive-{next(bucket_names)}"
    client.create_bucket(Bucket=client.bucket)
    client.endpoint = s3_server
    return client


def upload(client, folder: Path, prefix: str) -> None:
    """Writes a folder's files under `prefix` as producers would, in turns of a thread pool."""
    files = [path for path in folder.rglob("*") if path.is_file()]

    def put(path: Path) -> None:
        key = f"{prefix}/{path.relative_to(folder).as_posix()}".lstrip("/")
        client.put_object(Bucket=client.bucket, Key=key, Body=path.read_bytes())

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, files))


def ingest(url: str, *args: str) -> str:
    out = StringIO()
    call_command("ingest_archive", url, *args, stdout=out, stderr=out)
    return out.getvalue()


def everything(client) -> dict[str, tuple[str, int]]:
    """Each object's key with its ETag and size: what a write would change."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=client.bucket):
        for item in page.get("Contents", ()):
            found[item["Key"]] = (item["ETag"], item["Size"])
    return found


# ---------------------------------------------------------------- as from a folder


def test_the_sample_archive_from_s3_gives_the_rows_it_gives_from_a_folder(local_tenant, s3):
    upload(s3, SAMPLE_ARCHIVE, "team/archive")
    before = everything(s3)
    url = f"s3://{s3.bucket}/team/archive"
    out = ingest(url)
    assert "imported 149 events into 6 runs (6 in the archive)" in out, out
    runs = {run.run_id: run for run in Run.objects.filter(tenant=local_tenant)}
    assert sorted(runs) == ["run_clean", "run_crashed", "run_dirty", "run_failed", "run_flaky", "run_same_ts"]
    assert row_of(runs["run_flaky"]) == RUN_FLAKY_ROW
    assert runs["run_clean"].summary == json.loads(
        (SAMPLE_ARCHIVE / "runs" / "run_clean" / "summary.json").read_text()
    )
    assert runs["run_clean"].graph is not None
    assert Diagnostic.objects.filter(run__run_id="run_dirty", code="malformed_line").count() == 1
    # Again: nothing new, nothing read twice; and the bucket is as it was.
    assert "nothing new" in ingest(url + "/")
    assert everything(s3) == before


def test_a_log_that_grows_between_imports_is_read_from_its_offset_with_a_ranged_get(
    local_tenant, s3, tmp_path, monkeypatch
):
    log = (SAMPLE_ARCHIVE / "runs" / "run_flaky" / "transitions.jsonl").read_bytes()
    lines = log.splitlines(keepends=True)
    first = b"".join(lines[:5]) + lines[5][:20]  # five lines and an unfinished sixth
    key = "runs/run_flaky/transitions.jsonl"
    s3.put_object(Bucket=s3.bucket, Key=key, Body=first)
    ranges = []
    made = s3_source.S3Source._client

    def watched(self):
        client = made(self)
        client.meta.events.register(
            "before-parameter-build.s3.GetObject", lambda params, **_: ranges.append(params.get("Range"))
        )
        return client

    monkeypatch.setattr(s3_source.S3Source, "_client", watched)
    url = f"s3://{s3.bucket}"
    assert "imported 5 events into 1 runs" in ingest(url)
    # The producer uploads its log again, longer.
    s3.put_object(Bucket=s3.bucket, Key=key, Body=log)
    assert f"imported {len(lines) - 5} events into 1 runs" in ingest(url)
    offset = len(b"".join(lines[:5]))
    assert ranges == ["bytes=0-", f"bytes={offset}-"]
    run = Run.objects.get(run_id="run_flaky")
    assert row_of(run) == RUN_FLAKY_ROW
    assert run.log_offset == len(log)
    assert Event.objects.filter(run=run).count() == len(lines)


def test_an_object_rewritten_shorter_is_log_shrank_and_nothing_stored_is_removed(local_tenant, s3):
    log = (SAMPLE_ARCHIVE / "runs" / "run_flaky" / "transitions.jsonl").read_bytes()
    key = "runs/run_flaky/transitions.jsonl"
    s3.put_object(Bucket=s3.bucket, Key=key, Body=log)
    ingest(f"s3://{s3.bucket}")
    stored = Event.objects.filter(run__run_id="run_flaky").count()
    s3.put_object(Bucket=s3.bucket, Key=key, Body=log.splitlines(keepends=True)[0])
    ingest(f"s3://{s3.bucket}")
    run = Run.objects.get(run_id="run_flaky")
    assert run.log_shrank
    assert Diagnostic.objects.filter(run=run, code="log_shrank").exists()
    assert Event.objects.filter(run=run).count() == stored


def seed(bucket: str, objects: list[tuple[str, bytes]]) -> None:
    """Puts objects straight into the loopback server's store (it runs in this process): 10,000
    PUT requests would take minutes on a busy 2-core machine, and what is tested is the reading."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for key, body in objects:
        backend.put_object(bucket, key, body)


def test_a_listing_of_10000_objects_is_read_page_after_page(local_tenant, s3, tmp_path):
    # 200 runs, each with its log and 49 files the import does not read: ten pages of keys, and the
    # runs of the last page are imported too.
    line = (SAMPLE_ARCHIVE / "runs" / "run_flaky" / "transitions.jsonl").read_text().split("\n")[0]
    event = json.loads(line)
    objects = []
    for number in range(200):
        run_id = f"run_{number:04}"
        body = (json.dumps(dict(event, run_id=run_id)) + "\n").encode()
        objects.append((f"big/runs/{run_id}/transitions.jsonl", body))
        objects.extend((f"big/runs/{run_id}/logs/step-{step:02}.txt", b"x") for step in range(49))
    seed(s3.bucket, objects)
    assert len(objects) == 10_000
    # A listing answers 1,000 keys at most: the last run's log is on the tenth page.
    assert s3.list_objects_v2(Bucket=s3.bucket, Prefix="big/")["IsTruncated"]
    out = ingest(f"s3://{s3.bucket}/big")
    assert "imported 200 events into 200 runs (200 in the archive)" in out, out[-500:]
    assert Run.objects.filter(tenant=local_tenant).count() == 200
    assert Run.objects.filter(run_id="run_0199").exists()


# ---------------------------------------------------------------- refusals, as for a folder


def test_bad_run_names_are_refused_as_for_a_folder(local_tenant, s3, tmp_path):
    archive = tmp_path / "archive"
    write_archive_run(
        archive, "run_good", [{"event": "run_start", "run_id": "run_good", "ts": "2024-01-01T00:00:00Z"}]
    )
    (archive / "runs" / "bad name!").mkdir()
    (archive / "runs" / "bad name!" / "transitions.jsonl").write_text("")
    (archive / "runs" / ".hidden").mkdir()
    (archive / "runs" / ".hidden" / "transitions.jsonl").write_text("")
    (archive / "runs" / "stray.txt").write_text("not a run")
    (archive / "runs" / "run_nolog").mkdir()
    (archive / "runs" / "run_nolog" / "graph.json").write_text("{}")
    upload(s3, archive, "")
    from_s3 = ingest(f"s3://{s3.bucket}")
    from_folder = ingest(str(archive))
    warnings = sorted(line for line in from_s3.splitlines() if line.startswith("warning:"))
    assert warnings == sorted(line for line in from_folder.splitlines() if line.startswith("warning:"))
    assert any("skipped runs/bad name!: not a valid run id" in w for w in warnings), warnings
    assert any("skipped runs/.hidden: not a valid run id" in w for w in warnings), warnings
    assert any("skipped runs/stray.txt: not a folder" in w for w in warnings), warnings
    assert any("runs/run_nolog has no transitions.jsonl yet" in w for w in warnings), warnings


def test_a_prefix_that_is_not_an_archive_root_says_what_to_give(local_tenant, s3):
    upload(s3, SAMPLE_ARCHIVE, "team/archive")
    cases = {
        "team/archive/runs": f"s3://{s3.bucket}/team/archive/runs is the runs/ folder of an archive: "
        f"give the archive root, its parent s3://{s3.bucket}/team/archive",
        "team/archive/runs/run_flaky": f"is one run's folder, not an archive root: give the archive that "
        f"holds it, s3://{s3.bucket}/team/archive",
        "team": f"s3://{s3.bucket}/team is not an archive: it has no runs/ folder",
        "nothing/here": f"s3://{s3.bucket}/nothing/here does not exist",
    }
    for prefix, said in cases.items():
        with pytest.raises(CommandError) as refused:
            ingest(f"s3://{s3.bucket}/{prefix}")
        assert said in str(refused.value)
    with pytest.raises(CommandError, match="does not exist: there is no bucket no-such-bucket"):
        ingest("s3://no-such-bucket/archive")
    assert not Run.objects.exists()


def moto_auth(endpoint: str, enforced: bool) -> None:
    """Turns moto's check of credentials and IAM policies on (every request) or off."""
    value = b"0" if enforced else b"inf"
    with urllib.request.urlopen(
        urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth", data=value, headers={"Content-Type": "text/plain"}
        )
    ):
        pass


@pytest.fixture
def enforced_auth(s3):
    yield
    moto_auth(s3.endpoint, enforced=False)


def test_refused_credentials_are_one_sentence_naming_the_bucket_and_nothing_is_imported(
    local_tenant, s3, enforced_auth, monkeypatch
):
    upload(s3, SAMPLE_ARCHIVE, "archive")
    moto_auth(s3.endpoint, enforced=True)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAKNOWNKEY0000")
    with pytest.raises(CommandError) as refused:
        ingest(f"s3://{s3.bucket}/archive")
    said = str(refused.value)
    assert said.startswith(f"the bucket {s3.bucket} refused these AWS credentials (InvalidAccessKeyId")
    assert "\n" not in said
    assert not Run.objects.exists()


def test_read_only_credentials_suffice(local_tenant, s3, enforced_auth, monkeypatch):
    """An IAM user that may only list and get: the import needs nothing more (it never writes)."""
    upload(s3, SAMPLE_ARCHIVE, "archive")
    iam = boto3.client(
        "iam",
        endpoint_url=s3.endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )
    iam.create_user(UserName="scope-reader")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:List*", "s3:Get*"],
                "Resource": [f"arn:aws:s3:::{s3.bucket}", f"arn:aws:s3:::{s3.bucket}/*"],
            }
        ],
    }
    iam.put_user_policy(UserName="scope-reader", PolicyName="read", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="scope-reader")["AccessKey"]
    moto_auth(s3.endpoint, enforced=True)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    # The same user may not write: moto enforces the policy.
    reader = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name="us-east-1",
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    with pytest.raises(reader.exceptions.ClientError, match="AccessDenied"):
        reader.put_object(Bucket=s3.bucket, Key="archive/runs/run_x/transitions.jsonl", Body=b"")
    assert "imported 149 events into 6 runs" in ingest(f"s3://{s3.bucket}/archive")


@pytest.mark.database_agnostic
def test_refused_credentials_exit_non_zero_from_the_command_line(local_tenant, s3, enforced_auth):
    upload(s3, SAMPLE_ARCHIVE, "archive")
    moto_auth(s3.endpoint, enforced=True)
    env = manage_env(**s3_env(s3.endpoint, key_id="AKIANOTAKNOWNKEY0000"))
    result = manage("ingest_archive", f"s3://{s3.bucket}/archive", env=env)
    assert result.returncode == 1
    assert f"the bucket {s3.bucket} refused these AWS credentials (InvalidAccessKeyId" in result.stderr
    assert not Run.objects.exists()


# ---------------------------------------------------------------- serve's follower


@pytest.mark.django_db(transaction=True)
def test_serve_follows_an_archive_in_s3(local_tenant, s3, tmp_path):
    archive = tmp_path / "archive"
    shutil.copytree(SAMPLE_ARCHIVE, archive)
    key = "archive/runs/run_flaky/transitions.jsonl"
    log = (archive / "runs" / "run_flaky" / "transitions.jsonl").read_bytes()
    lines = log.splitlines(keepends=True)
    (archive / "runs" / "run_flaky" / "transitions.jsonl").write_bytes(b"".join(lines[:5]))
    upload(s3, archive, "archive")
    url = f"s3://{s3.bucket}/archive"
    env = manage_env(KAHN_ARCHIVE=url, **s3_env(s3.endpoint))
    with served(env, "--follow-interval", "0.2") as server:
        wait_for(server, "imported 119 events into 6 runs")
        # The producer uploads the log again, longer: the follower reads what was appended.
        s3.put_object(Bucket=s3.bucket, Key=key, Body=log)
        output = wait_for(server, f"imported {len(lines) - 5} events into 1 run: run_flaky +{len(lines) - 5}")
    assert f"following the archive {url} (KAHN_ARCHIVE)" in output
    assert row_of(Run.objects.get(run_id="run_flaky")) == RUN_FLAKY_ROW


def wait_for(server, text: str) -> str:
    deadline = time.monotonic() + 30
    while text not in (output := server.output()):
        assert time.monotonic() < deadline, f"serve never said {text!r}; it said:\n{output}"
        time.sleep(0.1)
    return output


@pytest.mark.database_agnostic
@pytest.mark.django_db(transaction=True)
def test_serve_says_once_that_the_bucket_refused_its_credentials(local_tenant, s3, enforced_auth):
    upload(s3, SAMPLE_ARCHIVE, "archive")
    moto_auth(s3.endpoint, enforced=True)
    env = manage_env(
        KAHN_ARCHIVE=f"s3://{s3.bucket}/archive", **s3_env(s3.endpoint, key_id="AKIANOTAKNOWN0000000")
    )
    with served(env, "--follow-interval", "0.2") as server:
        wait_for(server, "refused these AWS credentials")
        time.sleep(1)  # five passes more
        output = server.output()
    said = [line for line in output.splitlines() if "refused these AWS credentials" in line]
    assert len(said) == 1, output
    assert said[0].startswith(f"the bucket {s3.bucket} refused these AWS credentials (InvalidAccessKeyId")
    assert "trying again every 0.2 s" in said[0]
    assert not Run.objects.exists()


def test_credentials_come_from_the_standard_files_and_none_at_all_is_one_sentence(
    local_tenant, s3, tmp_path, monkeypatch
):
    upload(s3, SAMPLE_ARCHIVE, "archive")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(CommandError) as refused:
        ingest(f"s3://{s3.bucket}/archive")
    assert str(refused.value).startswith(
        f"s3://{s3.bucket}/archive cannot be read: no AWS credentials were found"
    )
    assert not Run.objects.exists()
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[reader]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "reader")
    assert "imported 149 events into 6 runs" in ingest(f"s3://{s3.bucket}/archive")
