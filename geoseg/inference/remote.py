"""A job folder in a bucket (``--output s3://bucket/prefix/``): products finished locally, published as objects.

Object storage has no rename, so the usual temp-name-then-rename cannot keep half-written products out of sight.
Here every product is finished as today, in a local **spool** folder (``GEOSEG_SPOOL``, default a folder under
the system temp dir named by the URL's hash), then uploaded as **one object** (one PUT, or a multipart upload
for large files, which S3 makes visible only when complete), and its local copy is removed: nothing partial is
ever visible under a final key, and the spool holds only the scenes in flight.

The bucket is the job folder of record. The manifest and its journal (:mod:`geoseg.inference.manifest`) are
uploaded after every recorded scene, after the scene's products; a job starts by downloading them, and a scene
counts as finished only if its recorded objects exist with their recorded sizes. So a job killed anywhere
resumes against the bucket from any machine (a Kubernetes pod rescheduled elsewhere starts with an empty spool):
a scene whose products were uploaded but not recorded is redone and its objects replaced.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import replace
from pathlib import Path

from geoseg.errors import GeoSegError
from geoseg.inference.manifest import JOURNAL, MANIFEST, file_size
from geoseg.inference.outputs import scene_outputs
from geoseg.inference.scene import Published
from geoseg.io import objectstore
from geoseg.io.objectstore import S3Url

SPOOL_ENV = "GEOSEG_SPOOL"


def spool_folder(url: S3Url) -> Path:
    base = Path(os.environ.get(SPOOL_ENV) or Path(tempfile.gettempdir()) / "geoseg-spool")
    return base / hashlib.sha256(str(url).encode()).hexdigest()[:16]


def fetch_bundle(url: S3Url) -> Path:
    """A model bundle in a bucket (``s3://models/landcover/bundle/``), downloaded into the spool: the driver
    loads it from there and ships the weights to the workers through Ray, as for a local bundle."""
    from geoseg.bundle import SPEC_FILE, WEIGHTS_FILE

    local = spool_folder(url) / "bundle"
    for name in (SPEC_FILE, WEIGHTS_FILE):
        if not objectstore.download(url.child(name), local / name):
            raise GeoSegError(f"no model bundle here ({name} is missing)", str(url))
    return local


class RemoteFolder:
    """The bucket prefix a job writes to, and the local spool it works in (see the module docstring)."""

    def __init__(self, url: S3Url, spool: Path) -> None:
        self.url, self.spool = url, spool

    def url_of(self, local: Path) -> S3Url:
        return self.url.child(local.relative_to(self.spool).as_posix())

    def pull(self) -> None:
        """Check the bucket is writable, then make the spool's records the bucket's (the bucket is the truth:
        records left in the spool by another job at this URL are dropped)."""
        objectstore.check_writable(self.url)
        self.spool.mkdir(parents=True, exist_ok=True)
        for name in (MANIFEST, JOURNAL):
            local = self.spool / name
            if not objectstore.download(self.url.child(name), local):
                local.unlink(missing_ok=True)

    def publish(self, published: Published, name: str, vector_format: str | None) -> Published:
        """Upload every product of scene ``name`` the spool holds (class raster, its style and categories,
        probabilities, polygons with all their parts), each as one object; remove the local copies; return
        the outputs as URLs."""
        uploaded: dict[str, str] = {}
        for path in scene_outputs(self.spool, name, vector_format):
            if path.parent != self.spool or not path.is_file():
                continue  # stacks/<name>.vrt is a local reading aid, not a product
            target = self.url_of(path)
            objectstore.upload(path, target)
            uploaded[str(path)] = str(target)
        for local in uploaded:
            Path(local).unlink(missing_ok=True)
        outputs = {key: uploaded.get(value, value) for key, value in published.outputs.items()}
        return replace(published, outputs=outputs)

    def fetch(self, output: str) -> Path:
        """A product of this job back in the spool (re-vectorizing a finished class raster)."""
        url = S3Url.parse(output)
        local = self.spool / url.key.rsplit("/", 1)[-1]
        objectstore.download(url, local)
        return local

    # Store (geoseg.inference.manifest): where recorded outputs are looked up, and records mirrored.

    def size(self, output: str) -> int | None:
        return objectstore.size(S3Url.parse(output)) if objectstore.is_s3(output) else file_size(output)

    def saved(self, path: Path, replaces: Path | None = None) -> None:
        self.upload(path)
        if replaces is not None:
            objectstore.delete(self.url_of(replaces))

    def remove(self, output: str) -> None:
        """Delete one of this job's products from the bucket (never anything outside its prefix)."""
        url = S3Url.parse(output)
        if url.bucket == self.url.bucket and url.key.startswith(self.url.key):
            objectstore.delete(url)

    def upload(self, path: Path) -> str:
        target = self.url_of(path)
        objectstore.upload(path, target)
        return str(target)
