"""An archive prediction job: many scenes, one Ray pool, a manifest that makes reruns resume.

The job folder holds ``<scene>.tif`` per scene, ``manifest.json`` (see :mod:`geoseg.inference.manifest`) and
``report.json``. Rerunning the same command skips scenes whose entry is ``ok`` with the same fingerprint and
source identity and whose output is still the file that was written; everything else is redone. Every file
is written under a temporary name and renamed, so a killed job never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import rasterio
from rich.console import Console
from rich.markup import escape

from geoseg.bundle import SPEC_FILE, WEIGHTS_FILE, BundleSpec, load_bundle
from geoseg.cluster import IN_PROCESS_HEAP, keep_freed_heap, ray_session
from geoseg.errors import GeoSegError
from geoseg.inference.executor import BlockExecutor, LocalExecutor
from geoseg.inference.headers import HeaderReader
from geoseg.inference.manifest import Manifest, source_identity, write_json_atomic
from geoseg.inference.options import PredictOptions
from geoseg.inference.outputs import (
    STACKS,
    guard_inputs,
    input_paths,
    own_products,
    remove_stale_partials,
    scene_names,
)
from geoseg.inference.publishing import MIN_SCENES, PublishingProcess
from geoseg.inference.remote import RemoteFolder, fetch_bundle, spool_folder
from geoseg.inference.report import FINISHED, SceneReport, Status, job_report, print_summary
from geoseg.inference.scene import (
    Published,
    SceneRun,
    StagedScene,
    file_sha256,
    polygonize_scene,
    polygons_error,
    publish_scene,
    run_scenes,
)
from geoseg.io.joblock import job_lock, prefix_lease
from geoseg.io.maskrules import MaskOptions
from geoseg.io.masks import mask_path, scene_mask
from geoseg.io.objectstore import S3Url, is_s3
from geoseg.io.paths import is_virtual
from geoseg.io.raster import SceneInfo, open_scene
from geoseg.io.sources import SceneSource, expand_inputs
from geoseg.io.stac import ResultScene, StacFilter, build_item_vrt, write_result_catalog
from geoseg.io.stack import build_stack_vrt
from geoseg.io.styles import style_class_raster, write_thumbnail
from geoseg.progress import meter
from geoseg.vector.formats import vector_files
from geoseg.vector.polygonize import VectorizeOptions

#: Below this many megapixels (and with no cluster named) a job runs in this process: see :func:`choose_path`.
SMALL_JOB_MPX = 24.0
MAX_PUBLISHING = 2  # scenes being published at once (their staging files are on disk meanwhile)


def job_fingerprints(bundle_dir: Path, options: PredictOptions) -> tuple[str, str]:
    """What produces the rasters (weights, bundle spec and the resolved tiling options), identified: the job's
    fingerprint, and the one geoseg recorded before the block size left it, which counts as the same
    (:meth:`PredictOptions.legacy_run_dict`).

    Vectorizing options are not in it: polygons are redone from the finished class raster when only they
    change, without running the model again (see :meth:`_Job.revectorize`). Nor is the block size, which only
    groups tiles."""
    bundle = hashlib.sha256()
    for name in (SPEC_FILE, WEIGHTS_FILE):
        bundle.update(file_sha256(bundle_dir / name).encode())

    def of(run: dict[str, object]) -> str:
        digest = bundle.copy()
        digest.update(json.dumps(run, sort_keys=True).encode())
        return digest.hexdigest()[:16]

    return of(options.model_run_dict()), of(options.legacy_run_dict())


def predict_archive(
    bundle_dir: Path | str,
    inputs: Iterable[str],
    out_dir: Path | str,
    options: PredictOptions,
    workers: int | None = None,
    ray_address: str | None = None,
    console: Console | None = None,
    executor: BlockExecutor | None = None,
    compile: bool = False,
    in_process: bool | None = None,
    stac_filter: StacFilter | None = None,
    stac_items: bool = False,
) -> list[SceneReport]:
    """Predict every input scene into ``out_dir/<scene>.tif``; write ``manifest.json`` and ``report.json``.

    ``out_dir`` may be ``s3://bucket/prefix/``: products are finished in a local spool and published as objects,
    and the bucket holds the manifest the job resumes from (:mod:`geoseg.inference.remote`).

    A scene that fails (unreadable, no CRS, wrong band count, ...) is reported with a one-line reason and
    the job moves on. Scenes already finished by an earlier run of the same job are skipped. ``options`` may
    leave tiling to the model (``None`` fields, see :mod:`geoseg.inference.options`).

    ``executor``: a warm pool to reuse (a notebook running several jobs, the benchmark); it must hold the
    bundle's model, and ``workers``/``ray_address``/``compile`` are then unused. By default the job starts
    its own (``compile``: ``torch.compile`` the model in each worker): in this process for a small job on no
    named cluster, else a Ray pool (``in_process`` forces either; see :func:`choose_path`).
    """
    with contextlib.ExitStack() as held:
        console = console or Console(stderr=True, soft_wrap=True)
        bundle_dir = fetch_bundle(S3Url.parse(str(bundle_dir))) if is_s3(bundle_dir) else Path(bundle_dir)
        spec, model = load_bundle(bundle_dir)
        sources = expand_inputs(inputs, stac_band_names(spec), stac_filter)
        if not is_s3(out_dir):
            own = own_products(Path(out_dir))
            kept = [s for s in sources if not own & {os.path.realpath(p) for p in s.local_files()}]
            if len(kept) < len(sources):
                console.print(f"left out {len(sources) - len(kept)} input(s) that are this job's own products")
            sources = kept
        if not sources:
            raise GeoSegError("no input scenes found", ", ".join(inputs))
        plan = list(zip(sources, scene_names(sources), strict=True))
        remote: RemoteFolder | None = None
        if is_s3(out_dir):
            url = S3Url.parse(str(out_dir))
            remote = RemoteFolder(url, spool_folder(url))
            guard_remote_inputs(url, plan, stac_items)
            out_dir = remote.spool
        out_dir = Path(out_dir).absolute()  # recorded outputs must not depend on where the next run starts
        guard_inputs(out_dir, plan, options.vector_format)  # before anything is written
        if stac_items:
            guard_stac_folder(out_dir / "stac", plan)
        prepare_job_folder(out_dir)
        held.enter_context(job_lock(out_dir))  # one job per folder; the kernel drops it if this process dies
        if remote is not None:
            held.enter_context(prefix_lease(remote.url))  # one job per bucket prefix, whichever host runs it
            remote.pull()  # the bucket's manifest: what is finished there, whoever ran it
        inputs = input_paths(plan)
        remove_stale_partials(out_dir, inputs)  # left by a killed run of this job; never a finished output
        geometry = spec.geometry()
        started = time.perf_counter()
        path = "given"
        with contextlib.ExitStack() as stack:
            if executor is None:
                path = choose_path(sources, ray_address, workers, in_process)
                if path == "in-process":
                    from geoseg.inference.worker import ModelWorker

                    threads = in_process_threads()
                    keep_freed_heap(**IN_PROCESS_HEAP)
                    executor = LocalExecutor(ModelWorker(spec, model.state_dict(), threads=threads, compile=compile))
                else:
                    from geoseg.inference.distributed import RayExecutor

                    stack.enter_context(ray_session(ray_address))
                    executor = RayExecutor(spec, model.state_dict(), workers, compile=compile)
                    stack.callback(executor.shutdown)
                console.print(f"executor: {path}", highlight=False)
            resolved = options.resolved(geometry, executor.gpu)
            fingerprint, legacy = job_fingerprints(bundle_dir, resolved)
            manifest = Manifest(out_dir, store=remote)
            for warning in manifest.warnings:
                console.print(f"warning: {warning}", markup=False)
            reports: dict[str, SceneReport] = {}
            todo, stale_vectors = [], []
            vectors_key = resolved.vectors.key() if resolved.vectors is not None else None
            for source, name in plan:
                identity = scene_identity(source, resolved.mask)
                done = manifest.finished(name, source.text, identity, fingerprint, source.key, older=(legacy,))
                if done is None:
                    todo.append((source, name, identity))
                elif vectors_key is not None and not manifest.vectors_current(name, vectors_key):
                    stale_vectors.append((source, name, identity, done))
                else:
                    reports[name] = done
                    if remote is None:
                        restore_sidecars(done, console)
            if todo or stale_vectors:
                publish: Callable[[StagedScene], Published] = publish_scene
                # Off the driver on a pool (its driver keeps feeding the workers meanwhile) and for an archive
                publishers: PublishingProcess | None = getattr(executor, "publishing", None)
                if publishers is None and (len(todo) >= MIN_SCENES or not isinstance(executor, LocalExecutor)):
                    publishers = held.enter_context(contextlib.closing(PublishingProcess()))
                if publishers is not None:
                    publishers.prestart(MAX_PUBLISHING if len(todo) >= MIN_SCENES else 0)
                    publish = publishers
                if remote is not None:
                    publish = _to_bucket(publish, remote, resolved.vector_format)
                job = _Job(spec, executor, out_dir, resolved, manifest, fingerprint, reports, console, publish, remote)
                job.inputs = inputs
                try:
                    job.revectorize(stale_vectors, inputs)
                    job.run(todo)
                finally:  # also on Ctrl-C: everything recorded lands in manifest.json
                    manifest.snapshot()
        ordered = [reports[name] for _, name in plan]
        notes = halo_notes(resolved, geometry.receptive_field)
        summary = job_report(
            ordered,
            bundle_dir,
            resolved.to_dict() | {"workers": workers, "receptive_field": geometry.receptive_field, "executor": path},
            notes,
            time.perf_counter() - started,
        )
        write_json_atomic(out_dir / "report.json", summary)
        if remote is not None:
            remote.upload(out_dir / "report.json")
        if stac_items:
            write_stac_items(spec, plan, ordered, out_dir, remote)
        print_summary(console, summary)
        return ordered


def write_stac_items(
    spec: BundleSpec,
    plan: list[tuple[SceneSource, str]],
    reports: list[SceneReport],
    out_dir: Path,
    remote: RemoteFolder | None,
) -> None:
    """``stac/<scene>/<scene>.json`` per finished scene and ``stac/catalog.json`` (see
    :func:`geoseg.io.stac.write_result_catalog`); in the bucket too when the job folder is one."""
    now = datetime.now(UTC)
    scenes = []
    for (source, _), report in zip(plan, reports, strict=True):
        if report.status == Status.FAILED or not report.output:
            continue
        outputs = {"classes": report.output}
        outputs |= {"probabilities": report.probabilities} if report.probabilities else {}
        outputs |= {"vectors": report.vectors} if report.vectors else {}
        acquired = report.acquired or source.acquired
        scenes.append(ResultScene(report.scene, outputs, datetime.fromisoformat(acquired) if acquired else None, now))
    classes = [(c.id, c.name, c.color) for c in spec.classes]
    folder = out_dir / "stac"
    written = write_result_catalog(folder, scenes, classes)
    if remote is not None:
        for path in written:
            remote.upload(path)


def guard_stac_folder(folder: Path, plan: list[tuple[SceneSource, str]]) -> None:
    """Refuse a job that reads from the STAC folder it would write (chaining jobs on a results catalogue)."""
    inside = os.path.realpath(folder) + os.sep
    for source, _ in plan:
        documents = [Path(source.document)] if source.document else []
        for path in [*source.local_files(), *documents]:
            if os.path.realpath(path).startswith(inside):
                raise GeoSegError(f"is an input inside the job's STAC folder {folder}; choose another --output", path)


def _to_bucket(
    publish: Callable[[StagedScene], Published], remote: RemoteFolder, vector_format: str | None
) -> Callable[[StagedScene], Published]:
    """``publish``, then each product uploaded as one object (see :mod:`geoseg.inference.remote`)."""

    def publish_and_upload(staged: StagedScene) -> Published:
        return remote.publish(publish(staged), staged.classes[1].stem, vector_format)

    return publish_and_upload


def guard_remote_inputs(url: S3Url, plan: list[tuple[SceneSource, str]], stac_items: bool = False) -> None:
    """Refuse a job whose bucket prefix holds one of its inputs where it publishes (the prefix itself, and its
    ``stac/`` folder with ``--stac-items``): publishing there could replace an input."""
    prefix = url.child("").key
    for source, _ in plan:
        for path in [*source.bands, *([source.document] if source.document else [])]:
            if not path.startswith(("/vsis3/", "s3://")) or S3Url.parse(path).bucket != url.bucket:
                continue
            rest = S3Url.parse(path).key
            if not rest.startswith(prefix):
                continue
            rest = rest[len(prefix) :]
            if "/" not in rest or (stac_items and rest.startswith("stac/")):
                raise GeoSegError(f"is an input inside the output prefix {url}; choose another prefix", path)


def stac_band_names(spec: BundleSpec) -> list[str] | None:
    """The names a STAC item's assets are chosen by, in the scene's band order; None when the bundle does not name
    every band it was trained on (a STAC scene is built from names alone)."""
    indexes = sorted(b.index for b in spec.bands)
    if indexes != list(range(1, spec.input_band_count + 1)):
        return None
    return [b.name for b in sorted(spec.bands, key=lambda b: b.index)]


def in_process_threads() -> int:
    """Torch threads of a job's in-process model: every core but one, which the publishing thread and GDAL get.

    With every core, torch's threads spun on the core that builds the last scene's COG, and an archive of
    small scenes ran 1.2x slower for 1.6x the CPU (1000 scenes of 256², 2 cores: 34-35 s with one thread,
    40-46 s with two; measured by ``benchmarks/predict.py --p7``).
    """
    return max(1, (os.cpu_count() or 1) - 1)


def choose_path(sources: list[SceneSource], ray_address: str | None, workers: int | None, forced: bool | None) -> str:
    """``in-process`` or ``ray``: a job below :data:`SMALL_JOB_MPX` on no named cluster runs in this process.

    Starting a private Ray with its actors costs ~10 s and ~1 GB; in-process prediction runs the same model code
    with torch's threads on every core. Measured (benchmarks/small_jobs.py, 2 vCPUs, U-Net base 16, whole
    command): Ray / in-process wall 2.81 at 1 Mpx, 1.81 at 4, 1.13 at 16, 0.91 at 32: the crossover is ~24 Mpx.
    Headers are read until the sum passes the threshold, so a large archive costs a few opens, not all.
    """
    if forced is not None:
        return "in-process" if forced else "ray"
    if ray_address or os.environ.get("RAY_ADDRESS") or (workers or 1) > 1:
        return "ray"
    total = 0.0
    for source in sources:
        try:
            with rasterio.open(source.bands[0]) as src:
                total += src.width * src.height / 1e6
        except rasterio.errors.RasterioIOError:
            continue  # it fails as a scene later, with its own message
        if total > SMALL_JOB_MPX:
            return "ray"
    return "in-process"


def halo_notes(options: PredictOptions, receptive_field: int) -> list[str]:
    """Say when tiles cannot reproduce whole-image inference: their halo is narrower than the model sees."""
    if options.halo is not None and options.halo < receptive_field:
        return [
            f"halo {options.halo} px is below the model's receptive field ({receptive_field} px): pixels near tile "
            "edges are computed partly from padding and may differ from whole-image inference"
        ]
    return []


def restore_sidecars(report: SceneReport, console: Console) -> None:
    """A finished scene whose category names (``.tif.aux.xml``), QGIS style (``.qml``) or quicklook (``.png``)
    were deleted gets them back: a skipped scene must still be what a finished one is."""
    output = Path(report.output or "")
    sidecars = [output.with_name(output.name + ".aux.xml"), output.with_suffix(".qml")]
    if not output.is_file():
        return
    if not all(p.exists() for p in sidecars):
        style_class_raster(output)
        console.print(f"restored the styles of {output}", markup=False)
    if not output.with_suffix(".png").exists() and write_thumbnail(output) is not None:
        console.print(f"restored the quicklook of {output}", markup=False)


def prepare_job_folder(out_dir: Path) -> None:
    """Create the job folder and prove it writable, so a read-only or missing folder is one line up front."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GeoSegError(f"cannot create the job folder ({exc.strerror or exc})", out_dir) from exc
    probe = out_dir / f".geoseg-write-probe.{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise GeoSegError(f"cannot write to the job folder ({exc.strerror or exc})", out_dir) from exc


def open_source(source: SceneSource, name: str, out_dir: Path, mask: MaskOptions | None = None) -> SceneInfo:
    """The scene's header, with its mask when the job has masks; a band stack or a STAC item is first written as
    ``stacks/<name>.vrt`` (its errors are its own, and so are a missing or unreadable mask's)."""
    if source.error is not None:
        raise GeoSegError(source.error, source.document or source.text)
    if source.assets:
        scene = open_scene(build_item_vrt(source.assets, out_dir / STACKS / f"{name}.vrt"))
    elif not source.is_stack:
        scene = open_scene(source.bands[0])
    else:
        scene = open_scene(build_stack_vrt(source.bands, out_dir / STACKS / f"{name}.vrt"))
    return scene if mask is None else replace(scene, mask=scene_mask(source, mask))


def scene_identity(source: SceneSource, mask: MaskOptions | None) -> str:
    """What the scene's result depends on besides the job: its files (local ones by their bytes, remote objects
    by what their store says of them now), its mask file when it has one (a redone cloud mask reruns the scene),
    and for a STAC item what the item told the reader: each band's asset href, scale, offset and nodata (an
    edited ``raster:bands`` offset reruns the scene, as a changed band choice does)."""
    files: list[str | Path] = [*source.local_files(), *(b for b in source.bands if is_virtual(b) or "://" in b)]
    if mask is not None:
        with contextlib.suppress(GeoSegError):  # no mask: the scene fails when it opens, saying so
            files.append(mask_path(source, mask))
    read_by = [[a.name, a.href, a.scale, a.offset, a.nodata] for a in source.assets]
    return source_identity(files, json.dumps(read_by) if read_by else "")


class _Job:
    """The scenes of one invocation: stream them through the executor, publish, record."""

    def __init__(
        self,
        spec: BundleSpec,
        executor: BlockExecutor,
        out_dir: Path,
        options: PredictOptions,
        manifest: Manifest,
        fingerprint: str,
        reports: dict[str, SceneReport],
        console: Console,
        publish: Callable[[StagedScene], Published],
        remote: RemoteFolder | None = None,
    ) -> None:
        self.spec, self.executor, self.out_dir, self.options = spec, executor, out_dir, options
        self.remote = remote
        self.recorded = 0
        self.manifest, self.fingerprint, self.reports, self.console = manifest, fingerprint, reports, console
        self.publish = publish
        self.lock = threading.Lock()  # the publishing threads record too
        self.identities: dict[str, str] = {}
        self.keys: dict[str, str] = {}  # each scene's source key (SceneSource.key), recorded with it
        self.acquired: dict[str, str] = {}  # STAC items' datetimes, recorded for mosaics by period
        self.inputs: set[str] = set()  # resolved paths of the job's inputs: never removed

    def record(self, path: str, name: str, report: SceneReport) -> None:
        with self.lock:
            if report.status in FINISHED:
                done = f"{path} -> {report.output} ({report.blocks} blocks, {report.seconds:.1f} s)"
                if report.masked_share is not None:
                    done += f", {report.masked_share:.1%} masked"
                self.console.print(f"[green]{report.status}[/] {escape(done)}")
                if report.error:  # the rasters are published; the polygons are redone by the next run
                    self.console.print(f"[red]failed[/] {escape(report.error)}")
            else:
                self.console.print(f"[red]failed[/] {escape(report.error or '')}")
            self.reports[name] = report
            previous = self.manifest.entries.get(name)
            vectors_key = self.options.vectors.key() if self.options.vectors is not None else None
            self.manifest.record(
                report, self.fingerprint, self.identities.get(name, ""), vectors_key, self.keys.get(name)
            )
            if previous is not None and report.status in FINISHED and self.remote is None:
                self._remove_superseded(previous.report, report)
            self.recorded += 1
            _kill_for_test(self.recorded)

    def _remove_superseded(self, before: SceneReport, now: SceneReport) -> None:
        """Products an earlier run of this job wrote for the scene that this run does not write (a probability
        raster or polygons of an earlier model or option set): left beside the new ones, they passed for its
        products. Only files of this job folder that the earlier record names, never an input."""
        kept = {now.output, now.probabilities, now.vectors}
        for old in (before.probabilities, before.vectors):
            if not old or old in kept or Path(old).parent != self.out_dir:
                continue
            parts = vector_files(Path(old))  # with its own style, never the raster's
            removed = []
            for part in parts:
                if os.path.realpath(part) in self.inputs or not part.exists() or part == Path(now.output or ""):
                    continue
                part.unlink()
                removed.append(part.name)
            if removed:
                self.console.print(
                    f"removed {', '.join(removed)}: written by an earlier model or option set", markup=False
                )

    def failed(self, path: str, name: str, exc: BaseException) -> SceneReport:
        return SceneReport(scene=name, source=path, status=Status.FAILED, error=scene_error(exc, path))

    def _publish(self, path: str, name: str, finished: SceneRun) -> None:
        try:
            report = finished.report(self.publish(finished.stage()))
            report.scene, report.source, report.acquired = name, path, self.acquired.get(name)
        except Exception as exc:  # one bad scene must not lose the others' work
            report = self.failed(path, name, exc)
        self.record(path, name, report)  # as soon as the files are in place: a crash later cannot lose them

    def revectorize(self, finished: list[tuple[SceneSource, str, str, SceneReport]], inputs: set[str]) -> None:
        """Polygons for scenes whose rasters are finished but whose polygons were made with other options
        (or another format): from the published class raster, without running the model again. The polygons
        of the previous options are removed (they were this job's output, never an input)."""
        options = self.options.vectors
        if options is None:
            return
        for source, name, identity, report in finished:
            self.identities[name] = identity
            self.keys[name] = source.key
            try:
                started = time.perf_counter()
                if self.remote is not None:
                    vectors_url = self._revectorize_in_bucket(name, report, options)
                    if report.vectors and report.vectors != vectors_url and is_s3(report.vectors):
                        self.remote.remove(report.vectors)  # the earlier options' polygons, this job's own object
                    report = replace(report, status=Status.OK, vectors=vectors_url, error=None)
                else:
                    vectors = polygonize_scene(Path(report.output or ""), options)
                    old = Path(report.vectors) if report.vectors else None
                    if old is not None and old != vectors and old.parent == self.out_dir:
                        for part in vector_files(old):
                            if os.path.realpath(part) not in inputs:
                                part.unlink(missing_ok=True)
                    report = replace(report, status=Status.OK, vectors=str(vectors), error=None)
                report.stage_seconds = report.stage_seconds | {"vectorize": round(time.perf_counter() - started, 3)}
                self.console.print(f"[green]ok[/] {escape(f'{report.output} -> {report.vectors} (model not rerun)')}")
                with self.lock:
                    self.reports[name] = report
                    self.manifest.record(report, self.fingerprint, identity, options.key(), source.key)
            except Exception as exc:  # one bad scene must not lose the others' work, nor its own raster
                kept = replace(
                    report, status=Status.OK, vectors=None, error=polygons_error(exc, Path(report.output or ""))
                )
                self.record(source.text, name, kept)

    def _revectorize_in_bucket(self, name: str, report: SceneReport, options: VectorizeOptions) -> str:
        """Polygons from the class raster in the bucket: fetched into the spool, polygonized, uploaded."""
        assert self.remote is not None
        local = self.remote.fetch(report.output or "")
        try:
            vectors = polygonize_scene(local, options)
            published = self.remote.publish(Published({"vectors": str(vectors)}, "", 0.0, 0.0), name, options.fmt)
        finally:
            local.unlink(missing_ok=True)
        return published.outputs["vectors"]

    def run(self, todo: list[tuple[SceneSource, str, str]]) -> None:
        sources: dict[str, str] = {}
        for source, name, identity in todo:
            self.identities[name] = identity
            self.keys[name] = source.key
            if source.acquired:
                self.acquired[name] = source.acquired
            sources[name] = source.text

        def open_one(source: SceneSource, name: str) -> SceneInfo:
            scene = open_source(source, name, self.out_dir, self.options.mask)
            if not source.acquired and scene.acquired:  # the file's own metadata says when
                self.acquired[name] = scene.acquired
            return scene

        publisher = ThreadPoolExecutor(max_workers=MAX_PUBLISHING, thread_name_prefix="geoseg-publish")
        publishing: list[Future[None]] = []
        settled: set[str] = set()
        try:
            with (
                meter(self.console, "predict", None, "Mpx") as bar,
                HeaderReader([(source, name) for source, name, _ in todo], open_one, bar.set_total) as headers,
            ):

                def targets() -> Iterator[tuple[str, SceneInfo, Path]]:
                    # Headers as they are read (geoseg.inference.headers): the first scene runs at once.
                    for name, header in headers:
                        if isinstance(header, Exception):  # this scene's own failure: the others go on
                            settled.add(name)
                            self.record(sources[name], name, self.failed(sources[name], name, header))
                            continue
                        yield name, header, self.out_dir / f"{name}.tif"

                stream = run_scenes(targets(), self.spec, self.executor, self.options, lambda n: bar.advance(n / 1e6))
                with contextlib.closing(stream):  # closed on Ctrl-C too: open scenes' staging files are removed
                    for name, outcome in stream:
                        settled.add(name)
                        if isinstance(outcome, Exception):  # one bad scene must not lose the others' work
                            self.record(sources[name], name, self.failed(sources[name], name, outcome))
                            continue
                        bar.describe(f"publishing {name}")
                        # The workers are already on the next scene while this one's COG is built and recorded.
                        publishing = [f for f in publishing if not f.done()]
                        if len(publishing) >= MAX_PUBLISHING:
                            publishing.pop(0).result()
                        publishing.append(publisher.submit(self._publish, sources[name], name, outcome))
                waiting = [f for f in publishing if not f.done()]
                if waiting:
                    bar.describe(f"publishing the last {len(waiting)} scene(s)")
                    for future in waiting:
                        future.result()
        except GeoSegError:
            raise  # the job's own folder failed it (its manifest cannot be written): nothing more can be recorded
        except Exception as exc:  # the pool itself failed (its actors kept dying): no scene left can run
            for name in [name for _, name, _ in todo if name not in settled]:  # headers unread included
                self.record(sources[name], name, self.failed(sources[name], name, exc))
        finally:  # also on Ctrl-C: a scene already predicted is published and recorded, not thrown away
            for future in publishing:
                future.result()
            publisher.shutdown()


def _kill_for_test(recorded: int) -> None:
    """Fault injection for the resume tests: ``GEOSEG_KILL_AFTER_SCENES=N`` kills this process (SIGKILL: no
    clean-up, as a node loss or an OOM kill) right after the N-th scene is recorded."""
    after = os.environ.get("GEOSEG_KILL_AFTER_SCENES")
    if after and recorded == int(after):
        os.kill(os.getpid(), signal.SIGKILL)


def scene_error(exc: BaseException, path: str) -> str:
    """One line naming the scene and the cause, whatever raised it (geoseg, GDAL, or Ray around either)."""
    ray = sys.modules.get("ray")  # loaded only by a job on Ray: then its errors may wrap the cause
    if ray is not None and isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        exc = exc.cause  # the reader's or actor's own error, not Ray's traceback around it
    if isinstance(exc, GeoSegError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{path}: {exc.strerror}"
    text = str(exc).strip()
    return f"{path}: {text.splitlines()[-1] if text else type(exc).__name__}"
