"""What a remote object is *now*: the headers its store answers a HEAD with, so a rerun can tell a replaced
object from the one a finished scene was computed from.

A local file is keyed by its size, time and a probe of its bytes (``inference.manifest.source_identity``); an
object behind a GDAL virtual path cannot be probed cheaply, but its store versions it: S3 gives every write a
new ETag and LastModified, an HTTP server its ``ETag`` / ``Last-Modified`` / ``Content-Length``. The stamp is
those values joined; ``None`` when the store gives none (a path that is not remote, a server that does not
answer HEAD): such an object is keyed by its name alone, as before, and the caller says nothing new.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from geoseg.errors import GeoSegError
from geoseg.io import objectstore

HTTP_TIMEOUT_S = 30.0
_CURL_PREFIXES = ("/vsicurl/", "/vsicurl_streaming/")


def remote_stamp(path: str) -> str | None:
    """``etag|size|last-modified`` of the object behind ``path`` (``/vsis3/``, ``s3://``, ``/vsicurl/``,
    ``http(s)://``); ``"missing"`` when the store says there is no such object; ``None`` when it is not a remote
    path or the store gives nothing to key it by."""
    if path.startswith(("s3://", "/vsis3/")):
        try:
            return objectstore.stamp(objectstore.S3Url.parse(path))
        except (GeoSegError, ValueError):
            return None  # no access now: the read fails this scene alone, saying why
    url = path
    for prefix in _CURL_PREFIXES:
        if url.startswith(prefix):
            url = url[len(prefix) :]
    if not url.startswith(("http://", "https://")):
        return None
    return _http_stamp(url)


def _http_stamp(url: str) -> str | None:
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            headers = response.headers
    except urllib.error.HTTPError as exc:
        return "missing" if exc.code in (404, 410) else None
    except (urllib.error.URLError, OSError, ValueError):
        return None  # unreachable now: the read will say why, in the scene's own line
    values = [headers.get(h, "") for h in ("ETag", "Content-Length", "Last-Modified")]
    return "|".join(values) if any(values) else None
