"""deploy/runtime_env.yaml and deploy/cluster.yaml, checked without a cloud.

* runtime_env.yaml: a Ray runtime_env; the package Ray would upload for ``--working-dir .`` is
  built with Ray's own packaging code and must hold the jobs, configs and package, and none of
  .git, results or caches.
* cluster.yaml: validated by the Ray cluster launcher's own schema (ray/autoscaler/ray-schema.json
  of the installed Ray, and ``ray up``'s own checks); the CPU image on the head, the CUDA image on
  the GPU workers; the image has what the launcher runs in the container (rsync, HOME).
"""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from deploy_files import (DEPLOY, REPO, apt_packages, dockerfile, dockerfile_env,
                          image_requirements, is_cuda_image)

RUNTIME_ENV_KEYS = {"working_dir", "py_modules", "pip", "uv", "conda", "env_vars", "excludes",
                    "container", "image_uri", "config", "py_executable", "java_jars", "nsight"}



# ---- runtime_env ------------------------------------------------------------------------


def test_runtime_env_upload_holds_code_not_results(tmp_path: Path) -> None:
    from ray._private.runtime_env.packaging import create_package

    env = yaml.safe_load((DEPLOY / "runtime_env.yaml").read_text())
    assert set(env) <= RUNTIME_ENV_KEYS, f"unknown runtime_env keys {set(env) - RUNTIME_ENV_KEYS}"
    ray.runtime_env.RuntimeEnv(**env)  # Ray's own validation of the known fields
    assert "working_dir" not in env  # given on the command line: --working-dir .

    # What `ray job submit --working-dir . --runtime-env deploy/runtime_env.yaml` uploads, with a
    # store and a result folder lying in the repository as users leave them.
    repo_copy = tmp_path / "repo"
    for name in ("jntk_dist", "jobs", "configs", "deploy", "pyproject.toml"):
        src = REPO / name
        dst = repo_copy / name
        if src.is_dir():
            import shutil

            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    (repo_copy / "runs" / "quickstart.zarr").mkdir(parents=True)
    (repo_copy / "runs" / "quickstart.zarr" / "zarr.json").write_text("{}")
    (repo_copy / "elsewhere.zarr").mkdir()
    (repo_copy / "elsewhere.zarr" / "c0").write_bytes(b"x" * 1000)
    (repo_copy / ".git").mkdir()
    (repo_copy / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo_copy / "jntk_dist" / "__pycache__").mkdir()
    (repo_copy / "jntk_dist" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    package = tmp_path / "pkg.zip"
    create_package(str(repo_copy), package, include_gitignore=True, excludes=env["excludes"])
    names = set(zipfile.ZipFile(package).namelist())
    for needed in ("jntk_dist/__init__.py", "jobs/gram.py", "configs/quickstart.yaml",
                   "jntk_dist/data/catalog.py"):
        assert needed in names, f"{needed} missing from the upload"
    assert any(n.startswith("jntk_dist/datasets/") for n in names)
    leaked = [n for n in names if n.startswith((".git/", "runs/")) or ".zarr" in n
              or "__pycache__" in n]
    assert not leaked, f"the upload carries {leaked}"
    assert package.stat().st_size < 20 * 2 ** 20


# ---- cluster launcher -------------------------------------------------------------------


def _validate_cluster(config: dict[str, Any]) -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_launcher_yaml_passes_rays_schema() -> None:
    config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    # The schema file the installed Ray ships (ray up validates against the same file).
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    prepared = _validate_cluster(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # The check bites: a misspelt key is refused by the same schema.
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["max_workerz"] = 2
    with pytest.raises(Exception, match="max_workerz"):
        _validate_cluster(broken)
    with pytest.raises(jsonschema.ValidationError, match="max_workerz"):
        jsonschema.validate(broken, schema)

    gpu_families = ("g4dn.", "g5.", "g6.", "g6e.", "p3.", "p4d.", "p5.")
    types = config["available_node_types"]
    head_type = str(types[config["head_node_type"]]["node_config"].get("InstanceType", ""))
    assert not head_type.startswith(gpu_families), "the head is a CPU node"
    gpu_workers = [name for name, node in types.items()
                   if name != config["head_node_type"]
                   and str(node["node_config"].get("InstanceType", "")).startswith(gpu_families)]
    assert gpu_workers, "no GPU worker node type"
    assert all(types[n]["max_workers"] >= 1 for n in gpu_workers)



def test_cluster_launcher_runs_the_cpu_image_on_the_head_and_cuda_on_the_workers() -> None:
    config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    docker = config["docker"]
    # What the launcher starts on each node: <role>_image, else image (run_init in Ray's
    # command_runner); a node type's own docker.worker_image overrides it for that type.
    head_image = docker.get("head_image", docker.get("image"))
    assert head_image and not is_cuda_image(head_image), head_image
    for name, node in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue
        image = node.get("docker", {}).get("worker_image",
                                           docker.get("worker_image", docker.get("image")))
        assert image and is_cuda_image(image), f"{name} runs {image}"
        assert image.split(":")[0] == head_image.split(":")[0], "one image, two torch builds"


def test_cluster_launcher_can_bootstrap_the_image() -> None:
    """What `ray up` does inside the container, and what the image must have for it."""
    config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    args, steps = dockerfile()
    apt = apt_packages(steps)
    # The launcher copies ~/ray_bootstrap_config.yaml (and its key) into the running container
    # with `rsync -e 'docker exec -i'`: rsync must be inside the image.
    assert "rsync" in apt, "ray up's rsync into the container needs rsync in the image"
    # It places `~/` bind mounts under the HOME of the image's environment (/root without it).
    env = dockerfile_env(steps)
    user = [a for op, a in steps if op == "USER"][-1]
    assert env.get("HOME") == f"/home/{user}"
    for remote in config["file_mounts"]:
        assert remote.startswith((env["HOME"] + "/", "~/", "/mnt/")), remote
    # The head starts the autoscaler with the AWS node provider, which imports boto3.
    if config["provider"]["type"] == "aws":
        assert "boto3" in " ".join(image_requirements()), "the head's AWS autoscaler needs boto3"


def test_cluster_launcher_security() -> None:
    config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head.replace(" --dashboard-host ", " --dashboard-host=")
    run_options = " ".join(config["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in run_options  # every Ray process in the containers
    # The dashboard agent's Prometheus exporter listens on every interface of a node whose IP is
    # not loopback, without a token: off on every node.
    assert "RAY_enable_metrics_collection=0" in run_options
    # The token reaches the nodes as a file mount, never inlined.
    assert any(dst.endswith(".ray/auth_token") for dst in config["file_mounts"])
    assert "RAY_AUTH_TOKEN=" not in (DEPLOY / "cluster.yaml").read_text()
