"""Archives in object storage, against a real S3 server on 127.0.0.1 (moto in server mode, started here, with
authentication on): a STAC catalogue in one bucket predicted into another, byte-identical to a local run; a job
killed mid-way resumed against the bucket from an empty spool; one-line errors for a missing bucket and for
wrong credentials; an item without a band failing alone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner
from test_stac import catalog

from geoseg import cli
from geoseg.io import objectstore

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A moto S3 server with IAM authentication: an access key allowed everything, created through the first
    (unauthenticated) requests; the environment GDAL and boto3 read points at it for this module."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "server.log"
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="4")
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"moto server did not start: {log.read_text()[-500:]}") from None
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        boot = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
        iam = boto3.client("iam", **boot)
        iam.create_user(UserName="geoseg")
        key = iam.create_access_key(UserName="geoseg")["AccessKey"]
        allow_all = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        policy = iam.create_policy(PolicyName="all", PolicyDocument=json.dumps(allow_all))["Policy"]["Arn"]
        iam.attach_user_policy(UserName="geoseg", PolicyArn=policy)
        settings = {
            "AWS_S3_ENDPOINT": f"127.0.0.1:{port}",
            "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        saved = {k: os.environ.get(k) for k in settings}
        os.environ.update(settings)
        objectstore._client.cache_clear()
        try:
            yield settings
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            objectstore._client.cache_clear()
    finally:
        server.terminate()
        server.wait(timeout=10)


def _put_tree(folder: Path, bucket: str, prefix: str) -> None:
    client = objectstore.client()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


@pytest.fixture(scope="module")
def archive(s3, tmp_path_factory) -> dict[str, Path | str]:
    """The catalogue of test_stac (clear, cloudy, no-nir items) twice: on disk, and in s3://archive/ with its
    assets' hrefs pointing into the bucket, as published archives are."""
    local = tmp_path_factory.mktemp("archive")
    root = catalog(local)
    remote = tmp_path_factory.mktemp("remote-catalog")
    for item_file in (local / "catalog").rglob("*.json"):
        target = remote / item_file.relative_to(local / "catalog")
        target.parent.mkdir(parents=True, exist_ok=True)
        doc = json.loads(item_file.read_text())
        for asset in doc.get("assets", {}).values():
            asset["href"] = "s3://archive/data/" + Path(asset["href"]).name
        target.write_text(json.dumps(doc))
    client = objectstore.client()
    client.create_bucket(Bucket="archive")
    client.create_bucket(Bucket="results")
    _put_tree(local / "data", "archive", "data")
    _put_tree(remote, "archive", "catalog")
    return {"local": root, "remote": "s3://archive/catalog/catalog.json"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from geoseg.bundle import BandSpec, init_bundle

    names = ["B02", "B03", "B04", "B08", "B11"]
    bands = [BandSpec(name=n, index=i, mean=0.1, std=0.1) for i, n in enumerate(names, 1)]
    return init_bundle(tmp_path_factory.mktemp("b") / "bundle", "unet", 5, 3, bands=bands, base_channels=4, depth=2)


def _predict(bundle: Path, source: str, output: str, *extra: str) -> tuple[int, str]:
    args = ["predict", "--model", str(bundle), "--input", source, "--output", output, "--in-process", *extra]
    result = CliRunner().invoke(cli.cli, args)
    return result.exit_code, result.output


def _objects(bucket: str, prefix: str) -> dict[str, bytes]:
    client = objectstore.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_a_catalogue_in_a_bucket_predicts_into_another_bucket_as_a_local_run_does(
    s3, archive, bundle, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("GEOSEG_SPOOL", str(tmp_path / "spool"))
    code, output = _predict(bundle, archive["remote"], "s3://results/job1/", "--vectorize", "gpkg", "--stac-items")
    assert code == 1 and "item 'no-nir' has no asset for band B08" in output  # fails alone
    local_code, _ = _predict(bundle, str(archive["local"]), str(tmp_path / "local"), "--vectorize", "gpkg")
    assert local_code == 1
    objects = _objects("results", "job1/")
    for name in ("clear.tif", "cloudy.tif"):
        assert objects[name] == (tmp_path / "local" / name).read_bytes()  # the same bytes as the local run
    assert {"clear.gpkg", "clear.qml", "clear.tif.aux.xml", "manifest.json", "report.json"} <= set(objects)
    result_item = json.loads(objects["stac/clear/clear.json"])  # the results' own catalogue, in the bucket
    assert result_item["assets"]["classes"]["href"] == "s3://results/job1/clear.tif" and "stac/catalog.json" in objects
    manifest = json.loads(objects["manifest.json"])["scenes"]
    assert manifest["clear"]["output"] == "s3://results/job1/clear.tif" and manifest["no-nir"]["status"] == "failed"
    assert not any(k.startswith(".") or "partial" in k for k in objects)  # no staging object ever
    assert not [p for p in (tmp_path / "spool").rglob("*.tif") if p.parent.name != "stacks"]  # the spool is emptied
    # Rerun: everything finished is found in the bucket, nothing is recomputed.
    code, output = _predict(bundle, archive["remote"], "s3://results/job1/", "--vectorize", "gpkg")
    report = json.loads(_objects("results", "job1/")["report.json"])
    assert [s["status"] for s in report["scenes"] if s["scene"] != "no-nir"] == ["skipped", "skipped"]
    # Only the polygon format changes: the polygons are made again from the rasters in the bucket (this failed
    # every scene: "cannot access local variable 'vectors'"), and the earlier polygons leave the bucket.
    code, output = _predict(bundle, archive["remote"], "s3://results/job1/", "--vectorize", "fgb")
    assert "model not rerun" in output and "cannot access" not in output
    objects = _objects("results", "job1/")
    assert {"clear_polygons.fgb", "clear_polygons.qml", "cloudy_polygons.fgb"} <= set(objects)
    assert not {"clear.gpkg", "cloudy.gpkg"} & set(objects)
    manifest = json.loads(objects["manifest.json"])["scenes"]
    assert manifest["clear"]["vectors"] == "s3://results/job1/clear_polygons.fgb" and manifest["clear"]["error"] is None


def test_a_job_killed_mid_way_resumes_against_the_bucket_from_an_empty_spool(s3, archive, bundle, tmp_path) -> None:
    _put_tree(bundle, "archive", "models/landcover")  # the model from the bucket too: nothing on a shared disk
    env = dict(os.environ, GEOSEG_SPOOL=str(tmp_path / "spool-a"), GEOSEG_KILL_AFTER_SCENES="1", PYTHONPATH=str(REPO))
    model = "s3://archive/models/landcover/"
    args = [sys.executable, "-m", "geoseg", "predict", "--model", model, "--input", archive["remote"]]
    args += ["--output", "s3://results/job2/", "--in-process", "--stac-filter", "ids=clear,cloudy"]
    killed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    first = _objects("results", "job2/")
    recorded = [json.loads(line)["scene"] for line in first["manifest.jsonl"].decode().splitlines()]
    assert len(recorded) == 1 and f"{recorded[0]}.tif" in first and "report.json" not in first
    env = dict(env, GEOSEG_SPOOL=str(tmp_path / "spool-b"))  # another machine: nothing local survives
    env.pop("GEOSEG_KILL_AFTER_SCENES")
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads(_objects("results", "job2/")["report.json"])
    status = {s["scene"]: s["status"] for s in report["scenes"]}
    assert status[recorded[0]] == "skipped" and sorted(status.values()) == ["ok", "skipped"]
    assert _objects("results", "job2/")[f"{recorded[0]}.tif"] == first[f"{recorded[0]}.tif"]


def test_a_missing_bucket_and_wrong_credentials_are_one_line_each(s3, archive, bundle, tmp_path) -> None:
    env = dict(os.environ, GEOSEG_SPOOL=str(tmp_path / "spool"), PYTHONPATH=str(REPO))
    args = [sys.executable, "-m", "geoseg", "predict", "--model", str(bundle), "--input", archive["remote"]]

    def run(output: str, **changes: str) -> tuple[int, str]:
        done = subprocess.run([*args, "--output", output], env=env | changes, capture_output=True, text=True)
        return done.returncode, done.stdout + done.stderr

    code, output = run("s3://no-such-bucket/job/")
    expected = "s3://no-such-bucket/job/: cannot write to the output bucket: the bucket does not exist"
    assert code == 1 and expected in output and "Traceback" not in output, output
    code, output = run("s3://results/job3/", AWS_SECRET_ACCESS_KEY="wrong-secret")
    assert code == 1 and "the credentials are not valid" in output and "wrong-secret" not in output, output
    assert len(output.strip().splitlines()) == 1, output


def test_an_item_whose_asset_is_missing_from_the_bucket_fails_alone(s3, archive, bundle, tmp_path) -> None:
    doc = json.loads(objectstore.read_bytes(objectstore.S3Url.parse("s3://archive/catalog/s2-l2a/clear/clear.json")))
    doc["id"] = "lost"
    doc["assets"]["B02"]["href"] = "s3://archive/data/never-uploaded_B02.tif"
    doc["links"] = []
    objectstore.client().put_object(Bucket="archive", Key="single/lost.json", Body=json.dumps(doc).encode())
    env = dict(os.environ, GEOSEG_SPOOL=str(tmp_path / "spool"), PYTHONPATH=str(REPO))
    args = [sys.executable, "-m", "geoseg", "predict", "--model", str(bundle), "--output", "s3://results/job4/"]
    args += ["--input", archive["remote"], "--input", "s3://archive/single/lost.json", "--in-process"]
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert "band B02 cannot be read" in done.stdout + done.stderr
    report = json.loads(_objects("results", "job4/")["report.json"])
    status = {s["scene"]: s["status"] for s in report["scenes"]}
    assert status == {"clear": "ok", "cloudy": "ok", "no-nir": "failed", "lost": "failed"}


def test_training_reads_scenes_and_labels_from_a_bucket_as_from_disk(s3, tmp_path) -> None:
    """Scenes found by a glob over the bucket's listing, raster and polygon labels read in place: the training
    patches equal those of the same archive on disk."""
    import numpy as np
    import torch
    from rich.console import Console

    from geoseg.synth import make_archive
    from geoseg.training.config import validate_config
    from geoseg.training.data import PatchDataset
    from geoseg.training.loop import _prepare

    make_archive(tmp_path / "synthetic", scenes=2, size=96, seed=4)
    objectstore.client().create_bucket(Bucket="training")
    _put_tree(tmp_path / "synthetic", "training", "synthetic")
    patches = {}
    for where, root in (("disk", str(tmp_path / "synthetic")), ("bucket", "s3://training/synthetic")):
        for labels in ("{stem}_labels.tif", "{stem}_labels.gpkg"):
            tree = {
                "data": {"root": root, "scenes": [{"image": "scene_???.tif", "labels": labels}], "split": "scene"},
                "classes": [{"id": i, "name": f"c{i}", "color": [0, 0, 0]} for i in range(6)],
            }
            _, spec, split = _prepare(validate_config(tree), tmp_path / f"run-{where}", Console(quiet=True))
            assert [s.info.path.rsplit("/", 1)[-1] for s in split.train + split.val] == [
                "scene_000.tif",
                "scene_001.tif",
            ]
            means = np.array([b.mean for b in spec.bands])
            stds = np.array([b.std for b in spec.bands])
            dataset = PatchDataset(split.train, list(range(6)), [1, 2, 3, 4], means, stds, 48, stride=48)
            patches[(where, labels)] = [dataset[i] for i in range(len(dataset))]
    for labels in ("{stem}_labels.tif", "{stem}_labels.gpkg"):
        disk, bucket = patches[("disk", labels)], patches[("bucket", labels)]
        assert len(disk) == len(bucket) == 4
        for (x_disk, y_disk), (x_bucket, y_bucket) in zip(disk, bucket, strict=True):
            assert torch.equal(x_disk, x_bucket) and torch.equal(y_disk, y_bucket)


def test_a_bucket_glob_or_prefix_is_one_scene_per_raster_object(s3, archive, bundle, tmp_path) -> None:
    """``s3://b/scenes/`` is the rasters directly under the prefix (a local folder's rule); a glob matches keys
    (``*`` crosses ``/``); a key holding wildcard characters is that object; a glob over the bucket predicts
    each match, and one that matches nothing is one line."""
    import numpy as np
    import rasterio

    from geoseg.io.sources import expand_inputs

    rng = np.random.default_rng(5)
    profile = {"driver": "GTiff", "width": 40, "height": 30, "count": 5, "dtype": "float32", "crs": "EPSG:32633"}
    profile["transform"] = rasterio.transform.from_origin(500_000, 5_800_000, 10, 10)
    client = objectstore.client()
    for key in ("scenes/a.tif", "scenes/b.tif", "scenes/odd[1].tif", "scenes/old/c.tif"):
        path = tmp_path / "scene.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(rng.uniform(0, 0.3, (5, 30, 40)).astype(np.float32))
        client.upload_file(str(path), "archive", key)
    client.put_object(Bucket="archive", Key="scenes/notes.txt", Body=b"not a raster")

    def found(text: str) -> list[str]:
        return [s.text for s in expand_inputs([text])]

    top = ["/vsis3/archive/scenes/a.tif", "/vsis3/archive/scenes/b.tif", "/vsis3/archive/scenes/odd[1].tif"]
    assert found("s3://archive/scenes/") == top
    assert found("s3://archive/scenes/*.tif") == [*top, "/vsis3/archive/scenes/old/c.tif"]
    assert found("s3://archive/scenes/odd[1].tif") == ["/vsis3/archive/scenes/odd[1].tif"]
    assert found("s3://archive/scenes/[ab].tif") == top[:2]

    code, output = _predict(bundle, "s3://archive/scenes/[ab].tif", "s3://results/globbed/")
    assert code == 0, output
    objects = _objects("results", "globbed/")
    with rasterio.MemoryFile(objects["a.tif"]) as memory, memory.open() as out:
        assert out.shape == (30, 40) and out.crs == "EPSG:32633"
    assert "b.tif" in objects and "odd[1].tif" not in objects
    args = [sys.executable, "-m", "geoseg", "predict", "--model", str(bundle), "--in-process"]
    args += ["--input", "s3://archive/nowhere/*.tif", "--output", str(tmp_path / "none")]
    done = subprocess.run(args, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    assert done.returncode == 1 and (done.stdout + done.stderr).strip().splitlines() == [
        "geoseg: error: s3://archive/nowhere/*.tif: no input scenes found"
    ], done.stdout + done.stderr


def test_a_mosaic_reads_a_job_from_its_bucket_prefix_as_from_its_folder(
    s3, archive, bundle, tmp_path, monkeypatch
) -> None:
    import numpy as np
    import rasterio

    monkeypatch.setenv("GEOSEG_SPOOL", str(tmp_path / "spool"))
    assert _predict(bundle, archive["remote"], "s3://results/mjob/", "--probabilities")[0] == 1  # no-nir fails alone
    assert _predict(bundle, str(archive["local"]), str(tmp_path / "local"), "--probabilities")[0] == 1
    runner = CliRunner()
    remote = runner.invoke(cli.cli, ["mosaic", "s3://results/mjob/", "--output", str(tmp_path / "from-bucket")])
    assert remote.exit_code == 0, remote.output
    local = runner.invoke(cli.cli, ["mosaic", str(tmp_path / "local"), "--output", str(tmp_path / "from-disk")])
    assert local.exit_code == 0, local.output
    for name in ("mosaic.vrt", "mosaic_stats.vrt"):
        with rasterio.open(tmp_path / "from-bucket" / name) as a, rasterio.open(tmp_path / "from-disk" / name) as b:
            assert np.array_equal(a.read(), b.read()) and a.transform == b.transform
    with rasterio.open(tmp_path / "from-bucket" / "mosaic_stats.vrt") as stats:
        assert stats.read(1).max() == 2  # clear and cloudy overlap everywhere
    missing = runner.invoke(cli.cli, ["mosaic", "s3://results/nothing-here/", "--output", str(tmp_path / "none")])
    assert str(missing.exception) == "s3://results/nothing-here/: is not a predict job prefix (no manifest.json)"
    assert not (tmp_path / "none").exists()


def test_an_object_replaced_in_place_is_redone(s3, archive, bundle, tmp_path) -> None:
    """A scene whose object was replaced under the same key was skipped on rerun: objects were keyed by name.
    Now by the ETag, size and time the store answers (issue 23, rule 2)."""
    import numpy as np
    import rasterio

    profile = {"driver": "GTiff", "width": 40, "height": 30, "count": 5, "dtype": "float32", "crs": "EPSG:32633"}
    profile["transform"] = rasterio.transform.from_origin(500_000, 5_800_000, 10, 10)
    client = objectstore.client()

    def put(seed: int) -> None:
        path = tmp_path / f"scene{seed}.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.random.default_rng(seed).uniform(-3, 3, (5, 30, 40)).astype(np.float32))
        client.upload_file(str(path), "archive", "replaced/a.tif")

    put(1)
    out = tmp_path / "out"
    code, output = _predict(bundle, "s3://archive/replaced/a.tif", str(out))
    assert code == 0 and "1 ok" in output, output
    first = (out / "a.tif").read_bytes()
    code, output = _predict(bundle, "s3://archive/replaced/a.tif", str(out))
    assert code == 0 and "0 ok, 0 failed, 1 skipped" in output, output
    put(2)
    # New processes, as reruns are: GDAL keeps what it read of an object for the life of its process.
    args = [sys.executable, "-m", "geoseg", "predict", "--model", str(bundle), "--in-process"]
    args += ["--input", "s3://archive/replaced/a.tif", "--output"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rerun = subprocess.run([*args, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "1 ok, 0 failed, 0 skipped" in rerun.stderr, rerun.stdout + rerun.stderr
    fresh = tmp_path / "fresh"
    assert subprocess.run([*args, str(fresh)], env=env, capture_output=True, timeout=300).returncode == 0
    assert (out / "a.tif").read_bytes() == (fresh / "a.tif").read_bytes() != first


def _refusal(bundle: Path, archive: dict[str, Path | str], output: str) -> str:
    """The one-line error of a predict refused before it started."""
    args = ["predict", "--model", str(bundle), "--input", str(archive["remote"]), "--output", output, "--in-process"]
    result = CliRunner().invoke(cli.cli, [*args, "--stac-filter", "ids=clear"])
    assert result.exit_code == 1 and isinstance(result.exception, cli.GeoSegError), result.output
    return str(result.exception)


def test_one_job_per_bucket_prefix_and_a_dead_jobs_lease_expires(s3, archive, bundle, tmp_path, monkeypatch) -> None:
    """Two jobs on one prefix overwrote each other's records (issue 23, rule 5): the second now meets the
    prefix's lease in one line naming the holder; a lease nobody renews (its job died) is taken over."""
    from geoseg.io import joblock

    monkeypatch.setenv("GEOSEG_SPOOL", str(tmp_path / "spool"))
    prefix = objectstore.S3Url.parse("s3://results/leased/")
    with joblock.prefix_lease(prefix):
        lease = json.loads(_objects("results", "leased/")[".geoseg.lock"])
        assert lease["pid"] == os.getpid()
        with (
            pytest.raises(cli.GeoSegError, match=r"another geoseg job is writing here \(pid \d+ on "),
            joblock.prefix_lease(prefix),
        ):
            pass
        refused = _refusal(bundle, archive, "s3://results/leased/")
        assert "another geoseg job is writing here" in refused and "s3://results/leased/" in refused
        assert set(_objects("results", "leased/")) == {".geoseg.lock"}  # nothing of the refused job
    assert _objects("results", "leased/") == {}  # released at the end
    # A job killed with its lease held: its lease stays until it is LEASE_S old, then the next job takes it.
    objectstore.put_if(prefix.child(".geoseg.lock"), b'{"pid": 1, "host": "lost", "since": "", "command": "x"}', None)
    assert "pid 1 on lost" in _refusal(bundle, archive, "s3://results/leased/")
    monkeypatch.setattr(joblock, "LEASE_S", 1.0)
    time.sleep(1.5)
    code, output = _predict(bundle, str(archive["remote"]), "s3://results/leased/", "--stac-filter", "ids=clear")
    assert code == 0, output
    objects = _objects("results", "leased/")
    assert "clear.tif" in objects and ".geoseg.lock" not in objects
