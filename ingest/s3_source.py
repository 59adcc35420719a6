"""An archive in an S3 bucket (`s3://bucket/prefix`, holding `runs/<run_id>/` as a folder does).

Producers on many machines upload their runs' files; the import reads them as it reads a folder:
a paginated listing of `prefix/runs/` gives each run's files and sizes, and a log is read from the
offset already imported with a ranged GET, so only what was appended since travels. S3 cannot
append: a producer uploads its log again, whole, as it grows. An object smaller than what was
imported was rewritten, not appended, and is `log_shrank`, as a shorter file is.

Only reads are made (ListObjectsV2, GetObject, HeadObject): read-only credentials suffice.
Credentials come from the standard AWS environment and files (`AWS_ACCESS_KEY_ID` /
`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, `~/.aws/credentials`, ...), and `AWS_ENDPOINT_URL` (or
`AWS_ENDPOINT_URL_S3`) points at an S3-compatible store.
"""

from __future__ import annotations

from typing import Any

import boto3
import orjson
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from ingest.archive import GRAPH, LOG, RUN_ID_RULE, SUMMARY, ArchiveError, RunFolder, printable
from runs import reduction

# Objects read at once within an import's chunk: each GET is a round trip.
READERS = 8
# AWS error codes that mean the credentials were refused, not that the archive is missing.
REFUSED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
}
FILES = (LOG, GRAPH, SUMMARY)


def _error_code(exc: ClientError) -> tuple[str, str]:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or "Unknown"), str(error.get("Message") or "")


class S3Source:
    """An archive under a prefix of an S3 bucket, read with one boto3 client (safe across threads)."""

    readers = READERS

    def __init__(self, bucket: str, prefix: str, client: Any = None) -> None:
        self.bucket = bucket
        # "" for the bucket's root, else the prefix with one "/" at its end.
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.shown = printable(f"s3://{bucket}/{self.prefix}".rstrip("/"))
        self.client = client if client is not None else self._client()

    @classmethod
    def from_url(cls, url: str) -> S3Source:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ArchiveError(
                f"{printable(url)} names no bucket: give s3://bucket/prefix, the prefix holding runs/"
            )
        return cls(bucket, prefix)

    def _client(self) -> Any:
        # The standard chain finds credentials, region and AWS_ENDPOINT_URL; a refusal is said at
        # once (no retries), a dropped connection is retried a little.
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=READERS * 2)
        session = boto3.session.Session()
        return session.client("s3", region_name=session.region_name or "us-east-1", config=config)

    # ---------------------------------------------------------------- listing

    def scan(self) -> tuple[list[RunFolder], list[str]]:
        runs_prefix = f"{self.prefix}runs/"
        sizes: dict[str, dict[str, int]] = {}
        folders_named: dict[str, set[str]] = {}
        warnings: list[str] = []
        for key, size in self._list(runs_prefix):
            name, sep, rest = key[len(runs_prefix) :].partition("/")
            if not sep:
                if name:  # "runs/" itself may be a folder marker
                    warnings.append(
                        f"skipped runs/{printable(name)}: not a folder (each run is a folder runs/<run_id>/)"
                    )
                continue
            files = sizes.setdefault(name, {})
            first, deeper, _ = rest.partition("/")
            if first in FILES:
                if deeper:
                    folders_named.setdefault(name, set()).add(first)
                else:
                    files[first] = size
        if not sizes and not warnings:
            self._check_root()
        folders = []
        for name in sorted(sizes):
            shown = printable(name)
            if not reduction.run_id_valid(name):
                warnings.append(f"skipped runs/{shown}: not a valid run id (a run id is {RUN_ID_RULE})")
                continue
            files = sizes[name]
            for file in sorted(folders_named.get(name, ()) - files.keys()):
                warnings.append(f"skipped runs/{shown}/{file}: it is a folder, not a regular file")
            if LOG not in files and LOG not in folders_named.get(name, ()):
                warnings.append(
                    f"runs/{shown} has no {LOG} yet: its events are imported once the producer writes it"
                )
            folders.append(
                RunFolder(
                    run_id=name,
                    where=f"{runs_prefix}{name}/",
                    log_size=files.get(LOG, -1),
                    has_graph=GRAPH in files,
                    has_summary=SUMMARY in files,
                    graph_size=files.get(GRAPH, -1),
                )
            )
        return folders, warnings

    def _list(self, prefix: str, delimiter: str = "") -> list[tuple[str, int]]:
        """Every object under `prefix`, page after page (1,000 keys a page), as (key, size)."""
        paginator = self.client.get_paginator("list_objects_v2")
        found: list[tuple[str, int]] = []
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter=delimiter):
                found.extend((item["Key"], item["Size"]) for item in page.get("Contents", ()))
                found.extend((item["Prefix"], 0) for item in page.get("CommonPrefixes", ()))
        except ClientError as exc:
            raise ArchiveError(self._refusal(exc)) from None
        except NoCredentialsError:
            raise ArchiveError(
                f"{self.shown} cannot be read: no AWS credentials were found (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with ~/.aws/credentials)"
            ) from None
        except BotoCoreError as exc:
            raise ArchiveError(f"{self.shown} cannot be read: {printable(str(exc))}") from None
        return found

    def _refusal(self, exc: ClientError) -> str:
        code, message = _error_code(exc)
        said = f"{code}: {printable(message)}" if message else code
        if code in REFUSED:
            return (
                f"the bucket {printable(self.bucket)} refused these AWS credentials ({said}): nothing was "
                "imported; give credentials that may list and read it (AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
            )
        if code == "NoSuchBucket":
            return f"{self.shown} does not exist: there is no bucket {printable(self.bucket)} ({code})"
        return f"{self.shown} cannot be read: the bucket {printable(self.bucket)} answered {said}"

    def _check_root(self) -> None:
        """Raises an ArchiveError saying what to give instead when nothing lies under `runs/`."""
        children = {key[len(self.prefix) :].rstrip("/") for key, _ in self._list(self.prefix, "/")}
        if not children:
            raise ArchiveError(
                f"{self.shown} does not exist: no object's key begins with "
                f"{printable(self.prefix) or 'anything'} in the bucket {printable(self.bucket)}"
            )
        trimmed = self.prefix.rstrip("/")
        parent, _, name = trimmed.rpartition("/")
        if children & set(FILES):
            grandparent, _, parent_name = parent.rpartition("/")
            if parent_name == "runs":
                raise ArchiveError(
                    f"{self.shown} is one run's folder, not an archive root: give the archive that holds "
                    f"it, {printable(f's3://{self.bucket}/{grandparent}'.rstrip('/'))}"
                )
            raise ArchiveError(
                f"{self.shown} looks like one run's folder, not an archive root: an archive root holds "
                "runs/<run_id>/transitions.jsonl"
            )
        if name == "runs":
            raise ArchiveError(
                f"{self.shown} is the runs/ folder of an archive: give the archive root, its parent "
                f"{printable(f's3://{self.bucket}/{parent}'.rstrip('/'))}"
            )
        raise ArchiveError(
            f"{self.shown} is not an archive: it has no runs/ folder (an archive root holds "
            "runs/<run_id>/transitions.jsonl)"
        )

    # ---------------------------------------------------------------- reading

    def read_log(self, folder: RunFolder, offset: int) -> tuple[int, bytes | None]:
        key = folder.where + LOG
        if folder.log_size < offset:
            return folder.log_size, None  # rewritten smaller than what was imported
        if folder.log_size == offset:
            return offset, b""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={offset}-")
        except ClientError as exc:
            if _error_code(exc)[0] != "InvalidRange":
                raise
            # Rewritten since the listing, no longer than what was imported.
            size = int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
            return size, (None if size < offset else b"")
        with answer["Body"] as body:
            data = body.read()
        # "bytes 100-199/200": the object's whole size, which may have grown since the listing.
        content_range = answer.get("ContentRange") or ""
        size = int(content_range.rpartition("/")[2]) if "/" in content_range else offset + len(data)
        return size, data

    def file_size(self, folder: RunFolder, name: str) -> int:
        # From the listing: only graph.json's size is asked, to refuse a graph too large to read.
        return folder.graph_size if name == GRAPH else -1

    def read_json(self, folder: RunFolder, name: str) -> Any:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=folder.where + name)
            with answer["Body"] as body:
                return orjson.loads(body.read())
        except (ClientError, BotoCoreError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"{name} is not readable JSON ({exc})") from exc
