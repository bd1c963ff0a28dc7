"""S3-compatible object storage: one client configured like GDAL, and one-line errors for what goes wrong.

Pixels are read through GDAL's ``/vsis3/`` (windowed range requests, no copy); what GDAL cannot do is write an
object atomically or list a prefix, so boto3 does that. Both are configured the same way, **only from the
environment** (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws, instance
and pod roles): credentials never come from job files and never reach logs or manifests. A custom endpoint (MinIO,
Ceph, a test server) is GDAL's ``AWS_S3_ENDPOINT`` (host:port) with ``AWS_HTTPS=NO`` for plain HTTP and
``AWS_VIRTUAL_HOSTING=FALSE`` for path-style URLs; boto3's own ``AWS_ENDPOINT_URL_S3`` wins when set.

An object is written in one request (or one multipart upload, for large ones) and appears under its key only
when complete: a reader never sees half a product, which a temp-name-then-rename cannot give on S3 (there is
no rename).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from geoseg.errors import GeoSegError

MULTIPART_THRESHOLD = 64 * 2**20


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str  # no leading slash; a "folder" ends with /

    @classmethod
    def parse(cls, text: str) -> S3Url:
        for scheme in ("s3://", "/vsis3/"):
            if text.startswith(scheme):
                bucket, _, key = text[len(scheme) :].partition("/")
                if not bucket:
                    break
                return cls(bucket, key)
        raise GeoSegError("not an S3 URL (s3://bucket/key)", text)

    def child(self, name: str) -> S3Url:
        prefix = self.key if not self.key or self.key.endswith("/") else self.key + "/"
        return S3Url(self.bucket, prefix + name)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def gdal(self) -> str:
        return f"/vsis3/{self.bucket}/{self.key}"


def is_s3(text: str | Path) -> bool:
    return str(text).startswith("s3://")


def endpoint_url() -> str | None:
    """The S3 endpoint: boto3's variables, else GDAL's ``AWS_S3_ENDPOINT`` (+ ``AWS_HTTPS``), else AWS."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(name):
            return os.environ[name]
    host = os.environ.get("AWS_S3_ENDPOINT")
    if not host:
        return None
    if "://" in host:
        return host
    https = os.environ.get("AWS_HTTPS", "YES").upper() not in ("NO", "FALSE", "OFF", "0")
    return f"{'https' if https else 'http'}://{host}"


@cache
def _client(endpoint: str | None, path_style: bool) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path" if path_style else "auto"},
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def client() -> Any:
    path_style = os.environ.get("AWS_VIRTUAL_HOSTING", "TRUE").upper() in ("FALSE", "NO", "OFF", "0")
    return _client(endpoint_url(), path_style)


def _error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore client error (``NoSuchKey``, ``403``...); empty for any other failure."""
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def s3_error(exc: BaseException, url: S3Url | str, doing: str) -> GeoSegError:
    """One line for an S3 failure: the bucket or key, what was being done, and the cause in words."""
    code = _error_code(exc)
    causes = {
        "NoSuchBucket": "the bucket does not exist",
        "404": "not found",
        "NoSuchKey": "not found",
        "InvalidAccessKeyId": "the credentials are not valid (AWS_ACCESS_KEY_ID unknown)",
        "SignatureDoesNotMatch": "the credentials are not valid (secret key does not match)",
        "AccessDenied": "access denied",
        "403": "access denied (check the credentials and the bucket policy)",
    }
    if code in causes:
        cause = causes[code]
    elif type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
        cause = "no credentials: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
    elif type(exc).__name__ in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        cause = f"cannot reach the S3 endpoint {endpoint_url() or 'of AWS'}"
    else:
        text = str(exc).strip()
        cause = text.splitlines()[-1] if text else type(exc).__name__
    return GeoSegError(f"cannot {doing}: {cause}", str(url))


def read_bytes(url: S3Url) -> bytes:
    try:
        return bytes(client().get_object(Bucket=url.bucket, Key=url.key)["Body"].read())
    except Exception as exc:
        raise s3_error(exc, url, "read the object") from exc


def _head(url: S3Url) -> dict[str, Any] | None:
    """The object's HEAD answer, None when there is none (any other failure is an error)."""
    try:
        return dict(client().head_object(Bucket=url.bucket, Key=url.key))
    except Exception as exc:
        if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise s3_error(exc, url, "look up the object") from exc


def size(url: S3Url) -> int | None:
    """The object's size, None when there is none (any other failure is an error)."""
    head = _head(url)
    return None if head is None else int(head["ContentLength"])


def stamp(url: S3Url) -> str:
    """``etag|size|last-modified`` of the object (every write gives it a new ETag), ``"missing"`` when there is
    none: a replaced object is told from the one a finished scene was computed from."""
    head = _head(url)
    if head is None:
        return "missing"
    modified = head.get("LastModified")
    return f"{head.get('ETag', '')}|{head.get('ContentLength', '')}|{modified.isoformat() if modified else ''}"


def put_if(url: S3Url, body: bytes, etag: str | None) -> str | None:
    """Write a small object only if it is as expected: absent (``etag`` None: S3's ``If-None-Match: *``) or
    still at ``etag`` (``If-Match``). Returns the new ETag, or None when the condition failed (someone else
    wrote or removed it first): the atomic step a lease is built on."""
    condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
    try:
        return str(client().put_object(Bucket=url.bucket, Key=url.key, Body=body, **condition)["ETag"])
    except Exception as exc:
        if _error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"):
            return None
        raise s3_error(exc, url, "write the object") from exc


def held(url: S3Url) -> tuple[str, float, bytes] | None:
    """(ETag, age in seconds by the store's own clock, body) of an object; None when there is none. The age
    is the store's ``Date`` minus its ``Last-Modified``: no two hosts' clocks are compared."""
    from email.utils import parsedate_to_datetime

    try:
        got = client().get_object(Bucket=url.bucket, Key=url.key)
    except Exception as exc:
        if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise s3_error(exc, url, "read the object") from exc
    now = parsedate_to_datetime(got["ResponseMetadata"]["HTTPHeaders"]["date"])
    return str(got["ETag"]), (now - got["LastModified"]).total_seconds(), bytes(got["Body"].read())


def delete_if(url: S3Url, etag: str) -> None:
    """Delete the object only while it is still at ``etag`` (a lease taken over by another job stays)."""
    with contextlib.suppress(Exception):
        client().delete_object(Bucket=url.bucket, Key=url.key, IfMatch=etag)


def upload(local: Path, url: S3Url) -> None:
    """``local`` as one object at ``url``: a single PUT, or a multipart upload above 64 MiB that S3 makes
    visible only once complete."""
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD)
    try:
        client().upload_file(str(local), url.bucket, url.key, Config=config)
    except Exception as exc:
        raise s3_error(exc, url, "upload") from exc


def download(url: S3Url, local: Path) -> bool:
    """Fetch ``url`` into ``local`` (via a temporary name); False when the object does not exist."""
    if size(url) is None:
        return False
    local.parent.mkdir(parents=True, exist_ok=True)
    staging = local.with_name(f".{local.name}.download")
    try:
        client().download_file(url.bucket, url.key, str(staging))
    except Exception as exc:
        staging.unlink(missing_ok=True)
        raise s3_error(exc, url, "download") from exc
    os.replace(staging, local)
    return True


def list_keys(prefix: S3Url) -> list[str]:
    """Every key under ``prefix`` (paginated)."""
    keys: list[str] = []
    try:
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=prefix.key):
            keys.extend(o["Key"] for o in page.get("Contents", []))
    except Exception as exc:
        raise s3_error(exc, prefix, "list the objects") from exc
    return keys


def glob(pattern: str) -> list[str]:
    """``/vsis3/bucket/prefix/*.tif`` (or ``s3://``): the objects whose keys match, as ``/vsis3/`` paths; one
    listing of the prefix before the first wildcard."""
    import fnmatch

    url = S3Url.parse(pattern)
    fixed = url.key[: min(url.key.index(c) for c in "*?[" if c in url.key)]
    keys = list_keys(S3Url(url.bucket, fixed))
    return [S3Url(url.bucket, k).gdal for k in keys if fnmatch.fnmatchcase(k, url.key)]


def rasters(text: str, suffixes: set[str]) -> list[str]:
    """The objects a ``/vsis3/`` (or ``s3://``) input names as several scenes, as ``/vsis3/`` paths in key
    order: a glob over the keys (``.../*.tif``; S3 has no folders, so ``*`` also matches ``/``) or a prefix
    ending in ``/`` (the objects directly under it, like a local folder), keeping keys whose suffix is in
    ``suffixes``."""
    url = S3Url.parse(text)
    if url.key.endswith("/") or not url.key:
        keys = [k for k in list_keys(url) if "/" not in k[len(url.key) :]]
        paths = [S3Url(url.bucket, k).gdal for k in keys]
    elif size(url) is not None:  # a key that holds wildcard characters is that object, as a local path is
        return [url.gdal]
    else:
        paths = glob(text)
    return [p for p in sorted(paths) if Path(p).suffix.lower() in suffixes]


def delete(url: S3Url) -> None:
    try:
        client().delete_object(Bucket=url.bucket, Key=url.key)
    except Exception as exc:
        raise s3_error(exc, url, "delete") from exc


def check_writable(url: S3Url) -> None:
    """Write and delete a probe object under ``url``: a missing bucket or bad credentials are one line before
    any scene runs, not an error after the first one was computed."""
    probe = url.child(".geoseg-write-probe")
    try:
        client().put_object(Bucket=probe.bucket, Key=probe.key, Body=b"")
        client().delete_object(Bucket=probe.bucket, Key=probe.key)
    except Exception as exc:
        raise s3_error(exc, url, "write to the output bucket") from exc


def stac_io() -> Any:
    """A pystac reader that also reads ``s3://`` and ``/vsis3/`` documents (through :func:`client`)."""
    from pystac.stac_io import DefaultStacIO

    class _S3StacIO(DefaultStacIO):
        def read_text_from_href(self, href: str) -> str:
            if href.startswith(("s3://", "/vsis3/")):
                return read_bytes(S3Url.parse(href)).decode()
            return str(super().read_text_from_href(href))

    return _S3StacIO()
