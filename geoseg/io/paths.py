"""What a path the user wrote means to GDAL: shared by the scene sources, STAC items and band stacks (a module
of its own, so that none of them imports another to learn it)."""

from __future__ import annotations

VIRTUAL_PREFIX = "/vsi"


def is_virtual(path: str) -> bool:
    """A GDAL virtual file system path (``/vsis3/...``, ``/vsizip/...``): not a local file, never normalised."""
    return path.startswith(VIRTUAL_PREFIX)


def gdal_path(text: str) -> str:
    """The path GDAL opens for what the user wrote: ``s3://b/k`` -> ``/vsis3/b/k``; everything else unchanged."""
    return "/vsis3/" + text[len("s3://") :] if text.startswith("s3://") else text
