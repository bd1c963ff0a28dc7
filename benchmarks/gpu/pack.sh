#!/usr/bin/env bash
# Prepare, on a machine with PyPI access, the wheels the GPU machine lacks (it has Python 3.12 with torch,
# numpy, pandas, pyarrow, pyyaml, rich, click, requests, msgpack, protobuf, aiohttp, grpcio, scipy, ... and no
# network). They travel with the device tool's `carry`, at most 64 MiB per call, so they are split into
# folders .whl1, .whl2, ... of at most 60 MiB each (ignored by git). ray's wheel (79 MB) is repacked without
# ray/jars (Java, 32 MB, unused). Usage: benchmarks/gpu/pack.sh   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=$(command -v "${PYTHON:-python3}")
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute: the repack below runs in another folder
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
platforms=()
for n in 2_17 2_27 2_28 2_24 2_31 2_34 2_35; do platforms+=(--platform "manylinux_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# geoseg's own needs beyond the GPU image, and theirs (ray core: jsonschema and its family; rasterio: affine,
# cligj, click-plugins; geopandas: pyogrio, pyproj, shapely; pydantic: its core and helpers).
packages=(
    ray==2.60.0 rasterio==1.4.4 affine cligj click-plugins shapely==2.2.0 pyogrio==0.13.0 pyproj geopandas
    pydantic pydantic-core annotated-types typing-inspection jsonschema jsonschema-specifications referencing
    rpds-py
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dl" "${packages[@]}"
# pystac (STAC inputs; imported by the predict job) and its pure-Python family: extensions, python-dateutil, six.
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dl" pystac
# ray without its Java jars: unpack, drop them and their RECORD lines, pack again.
for wheel in "$dl"/ray-*.whl; do
    unpacked=$(mktemp -d)
    (cd "$unpacked" && "$PY" -m zipfile -e "$wheel" . && rm -rf ray/jars && \
        sed -i '/^ray\/jars\//d' ray-*.dist-info/RECORD && rm "$wheel" && \
        "$PY" -m zipfile -c "$wheel" ./*)
    rm -rf "$unpacked"
done
rm -rf .whl[0-9]*
folder=1 used=0
limit=$((60 * 1024 * 1024))
for wheel in $(ls -S "$dl"/*.whl); do
    size=$(stat -c %s "$wheel")
    if ((used + size > limit)); then folder=$((folder + 1)) used=0; fi
    mkdir -p ".whl$folder"
    cp "$wheel" ".whl$folder/"
    used=$((used + size))
done
du -sh .whl[0-9]*
