"""Remote objects' stamps, against a real HTTP server on 127.0.0.1: a replaced file gets another stamp, a
missing one says so, a path that is not remote has none (S3's are checked in test_objectstore)."""

from __future__ import annotations

import functools
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

from geoseg.io.stamps import remote_stamp


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_http_object_is_stamped_by_what_its_server_answers(tmp_path) -> None:
    scene = tmp_path / "a.tif"
    scene.write_bytes(b"x" * 100)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/a.tif"
        before = remote_stamp(f"/vsicurl/{url}")
        assert before is not None and before.split("|")[1] == "100"
        assert remote_stamp(url) == before  # the URL and GDAL's path for it are one object
        scene.write_bytes(b"y" * 100)  # replaced in place, same size, a later time
        os.utime(scene, (2_000_000_000, 2_000_000_000))
        assert remote_stamp(url) not in (None, before)
        assert remote_stamp(url.replace("a.tif", "gone.tif")) == "missing"
    finally:
        server.shutdown()
        server.server_close()
    assert remote_stamp(url) is None  # unreachable now: the read says why, in the scene's own line
    assert remote_stamp(str(scene)) is None and remote_stamp("/vsizip/x.zip/a.tif") is None
