"""deploy/ and the install scripts: every file checked as far as this machine allows (no cloud,
Kubernetes or container engine).

* runtime_env.yaml: a Ray runtime_env; the package Ray would upload for ``--working-dir .`` is
  built with Ray's own packaging code and must hold the jobs, configs and package, and none of
  .git, results or caches.
* cluster.yaml: validated by the Ray cluster launcher's own schema (ray/autoscaler/ray-schema.json
  of the installed Ray, and ``ray up``'s own checks); the CPU image on the head, the CUDA image on
  the GPU workers; the image has what the launcher runs in the container (rsync, HOME).
* kuberay/*.yaml: a structural schema of the RayCluster / RayJob fields used, written from the
  KubeRay ray.io/v1 CRD (unknown fields are errors, as the CRDs' structural schemas make them);
  rayVersion is the installed Ray; the RayJob's entrypoint names an existing job and a config that
  validates with its overrides; the shared volume claim is a file of its own, so applying the
  RayJob starts no other cluster; the image has `wget` for KubeRay's default probes.
* Dockerfile: the installs are scripts/bootstrap.sh's (torch pinned, from the same index, first;
  then the package); dependencies are installed from pyproject.toml alone, before the code is
  copied (layer cache).
* scripts/quickstart.sh, scripts/test.sh, .ci/run: what they install and run, against a stand-in
  interpreter that records its calls (no network); pytest collecting nothing fails .ci/run.
* Security: the dashboard / Jobs API never listens on 0.0.0.0 without token auth; the metrics
  exporter is off in every shipped Ray config; no token is written into any file; configs are read
  without pickle or eval.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from conftest import kill_processes
from jntk_dist.workflows.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
IMAGE_ROOT = "/home/ray/jntk_dist"  # WORKDIR of deploy/Dockerfile

RUNTIME_ENV_KEYS = {"working_dir", "py_modules", "pip", "uv", "conda", "env_vars", "excludes",
                    "container", "image_uri", "config", "py_executable", "java_jars", "nsight"}


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


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


def _is_cuda_image(image: str) -> bool:
    return bool(re.search(r":[^:]*-cu\d+$", image))


def test_cluster_launcher_runs_the_cpu_image_on_the_head_and_cuda_on_the_workers() -> None:
    config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    docker = config["docker"]
    # What the launcher starts on each node: <role>_image, else image (run_init in Ray's
    # command_runner); a node type's own docker.worker_image overrides it for that type.
    head_image = docker.get("head_image", docker.get("image"))
    assert head_image and not _is_cuda_image(head_image), head_image
    for name, node in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue
        image = node.get("docker", {}).get("worker_image",
                                           docker.get("worker_image", docker.get("image")))
        assert image and _is_cuda_image(image), f"{name} runs {image}"
        assert image.split(":")[0] == head_image.split(":")[0], "one image, two torch builds"


def test_cluster_launcher_can_bootstrap_the_image() -> None:
    """What `ray up` does inside the container, and what the image must have for it."""
    config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    args, steps = _dockerfile()
    apt = _apt_packages(steps)
    # The launcher copies ~/ray_bootstrap_config.yaml (and its key) into the running container
    # with `rsync -e 'docker exec -i'`: rsync must be inside the image.
    assert "rsync" in apt, "ray up's rsync into the container needs rsync in the image"
    # It places `~/` bind mounts under the HOME of the image's environment (/root without it).
    env = _dockerfile_env(steps)
    user = [a for op, a in steps if op == "USER"][-1]
    assert env.get("HOME") == f"/home/{user}"
    for remote in config["file_mounts"]:
        assert remote.startswith((env["HOME"] + "/", "~/", "/mnt/")), remote
    # The head starts the autoscaler with the AWS node provider, which imports boto3.
    if config["provider"]["type"] == "aws":
        assert "boto3" in " ".join(_image_requirements()), "the head's AWS autoscaler needs boto3"


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


# ---- KubeRay ----------------------------------------------------------------------------
# A structural schema of the ray.io/v1 fields the manifests use, written from KubeRay's CRD and API
# reference (RayClusterSpec, HeadGroupSpec, WorkerGroupSpec, RayJobSpec, AuthOptions: KubeRay
# 1.5.1, where authOptions first appears; secretName needs 1.6) and the core/v1 Pod fields. Unknown
# fields are errors here as they are for the API server, which prunes or refuses them.

_QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string",
                                              "pattern": r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?|m)?$"}]}
_RESOURCES = {"type": "object", "additionalProperties": False,
              "properties": {"requests": {"type": "object", "additionalProperties": _QUANTITY},
                             "limits": {"type": "object", "additionalProperties": _QUANTITY}},
              "required": ["limits"]}
_ENV = {"type": "array", "items": {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {"name": {"type": "string", "minLength": 1}, "value": {"type": "string"},
                   "valueFrom": {"type": "object"}}}}
_PORTS = {"type": "array", "items": {
    "type": "object", "required": ["containerPort"], "additionalProperties": False,
    "properties": {"containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                   "name": {"type": "string", "maxLength": 15}, "protocol": {"enum": ["TCP", "UDP"]}}}}
_CONTAINER = {
    "type": "object", "required": ["name", "image", "resources"],
    "properties": {"name": {"type": "string"}, "image": {"type": "string", "minLength": 3},
                   "resources": _RESOURCES, "workingDir": {"type": "string"},
                   "ports": _PORTS, "volumeMounts": {"type": "array", "items": {
                       "type": "object", "required": ["name", "mountPath"]}},
                   "env": _ENV},
    "additionalProperties": False,
}
_POD_TEMPLATE = {
    "type": "object", "required": ["spec"], "additionalProperties": False,
    "properties": {"metadata": {"type": "object"}, "spec": {
        "type": "object", "required": ["containers"],
        "properties": {"containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
                       "volumes": {"type": "array"}, "securityContext": {"type": "object"},
                       "tolerations": {"type": "array"}, "nodeSelector": {"type": "object"},
                       "serviceAccountName": {"type": "string"}},
        "additionalProperties": False}},
}
_RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
_CLUSTER_SPEC = {
    "type": "object", "required": ["rayVersion", "headGroupSpec"], "additionalProperties": False,
    "properties": {
        "rayVersion": {"type": "string"},
        "authOptions": {"type": "object", "additionalProperties": False,
                        "properties": {"mode": {"enum": ["disabled", "token"]},
                                       "secretName": {"type": "string"}}},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": {"type": "object", "additionalProperties": False, "properties": {
            "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
            "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
            "env": _ENV, "resources": _RESOURCES, "image": {"type": "string"}}},
        "headServiceAnnotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "headGroupSpec": {
            "type": "object", "required": ["rayStartParams", "template"],
            "additionalProperties": False,
            "properties": {"serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                           "rayStartParams": _RAY_START_PARAMS, "template": _POD_TEMPLATE}},
        "workerGroupSpecs": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["groupName", "rayStartParams", "template", "minReplicas", "maxReplicas"],
            "properties": {"groupName": {"type": "string"},
                           "replicas": {"type": "integer", "minimum": 0},
                           "minReplicas": {"type": "integer", "minimum": 0},
                           "maxReplicas": {"type": "integer", "minimum": 1},
                           "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
                           "rayStartParams": _RAY_START_PARAMS, "template": _POD_TEMPLATE}}},
    },
}
_METADATA = {"type": "object", "required": ["name"],
             "properties": {"name": {"type": "string",
                                     "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}}}
SCHEMAS = {
    "RayCluster": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
                   "additionalProperties": False,
                   "properties": {"apiVersion": {"const": "ray.io/v1"}, "kind": {},
                                  "metadata": _METADATA, "spec": _CLUSTER_SPEC}},
    "RayJob": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
               "additionalProperties": False,
               "properties": {"apiVersion": {"const": "ray.io/v1"}, "kind": {},
                              "metadata": _METADATA, "spec": {
                                  "type": "object", "additionalProperties": False,
                                  "required": ["entrypoint", "rayClusterSpec"],
                                  "properties": {
                                      "entrypoint": {"type": "string"},
                                      "runtimeEnvYAML": {"type": "string"},
                                      "shutdownAfterJobFinishes": {"type": "boolean"},
                                      "ttlSecondsAfterFinished": {"type": "integer",
                                                                  "minimum": 0},
                                      "activeDeadlineSeconds": {"type": "integer",
                                                                "minimum": 1},
                                      "backoffLimit": {"type": "integer", "minimum": 0},
                                      "submissionMode": {"enum": ["K8sJobMode", "HTTPMode",
                                                                  "InteractiveMode",
                                                                  "SidecarMode"]},
                                      "rayClusterSpec": _CLUSTER_SPEC}}}},
    "PersistentVolumeClaim": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {"apiVersion": {"const": "v1"}, "kind": {}, "metadata": _METADATA, "spec": {
            "type": "object", "required": ["accessModes", "resources"],
            "additionalProperties": False,
            "properties": {
                "accessModes": {"type": "array", "minItems": 1, "items": {
                    "enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany",
                             "ReadWriteOncePod"]}},
                "resources": {"type": "object", "required": ["requests"],
                              "properties": {"requests": {
                                  "type": "object", "required": ["storage"],
                                  "additionalProperties": _QUANTITY}}},
                "storageClassName": {"type": "string"}}}}},
}
MANIFESTS = sorted((DEPLOY / "kuberay").glob("*.yaml"))
RAY_MANIFESTS = [p for p in MANIFESTS
                 if any(d["kind"] in ("RayCluster", "RayJob") for d in _yaml_docs(p))]


def _cluster_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "RayCluster":
        return [doc["spec"]]
    if doc["kind"] == "RayJob":
        return [doc["spec"]["rayClusterSpec"]]
    return []


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [spec["headGroupSpec"]] + spec.get("workerGroupSpecs", [])
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kuberay_manifests_pass_the_schema(path: Path) -> None:
    docs = _yaml_docs(path)
    assert docs
    for doc in docs:
        assert doc["kind"] in SCHEMAS, f"{path.name}: unexpected kind {doc['kind']}"
        jsonschema.validate(doc, SCHEMAS[doc["kind"]])


@pytest.mark.parametrize("path", RAY_MANIFESTS, ids=lambda p: p.name)
def test_kuberay_manifest_structure(path: Path) -> None:
    docs = _yaml_docs(path)
    assert [d["kind"] for d in docs].count("PersistentVolumeClaim") == 0, \
        "the volume claim lives in pvc.yaml, applied once for the RayCluster and the RayJob"
    for doc in docs:
        for spec in _cluster_specs(doc):
            assert spec["rayVersion"] == ray.__version__
            head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
            assert head["image"].split(":")[0].endswith("jntk-dist")
            assert not _is_cuda_image(head["image"]), "the head runs the CPU image"
            assert head["resources"]["limits"].get("nvidia.com/gpu") is None
            groups = spec.get("workerGroupSpecs", [])
            assert groups, "no worker group"
            for group in groups:
                replicas = group.get("replicas", group["minReplicas"])
                assert group["minReplicas"] <= replicas <= group["maxReplicas"]
            gpu = [g for g in groups if any(
                "nvidia.com/gpu" in c["resources"]["limits"]
                for c in g["template"]["spec"]["containers"])]
            assert gpu, "no GPU worker group"
            for g in gpu:
                assert all(_is_cuda_image(c["image"]) for c in g["template"]["spec"]["containers"])
            claims = {v["persistentVolumeClaim"]["claimName"]
                      for t in [spec["headGroupSpec"]["template"]]
                      + [g["template"] for g in groups]
                      for v in t["spec"].get("volumes", []) if "persistentVolumeClaim" in v}
            assert len(claims) == 1, "head and workers must share one store volume"
            pvcs = {d["metadata"]["name"] for p in MANIFESTS for d in _yaml_docs(p)
                    if d["kind"] == "PersistentVolumeClaim"}
            assert claims <= pvcs, f"claim {claims} is in no manifest"
    # The schema bites: an unknown field in a worker group is refused.
    broken = copy.deepcopy(next(d for d in docs if d["kind"] in ("RayCluster", "RayJob")))
    spec = broken["spec"] if broken["kind"] == "RayCluster" else broken["spec"]["rayClusterSpec"]
    spec["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(broken, SCHEMAS[broken["kind"]])
    # ... and so does a misspelt container field or a number where the CRD wants a string.
    broken = copy.deepcopy(next(d for d in docs if d["kind"] in ("RayCluster", "RayJob")))
    spec = broken["spec"] if broken["kind"] == "RayCluster" else broken["spec"]["rayClusterSpec"]
    spec["headGroupSpec"]["template"]["spec"]["containers"][0]["envv"] = []
    with pytest.raises(jsonschema.ValidationError, match="envv"):
        jsonschema.validate(broken, SCHEMAS[broken["kind"]])
    spec["headGroupSpec"]["template"]["spec"]["containers"][0].pop("envv")
    spec["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'string'"):
        jsonschema.validate(broken, SCHEMAS[broken["kind"]])


def test_applying_the_raycluster_starts_no_gpu_worker() -> None:
    doc = next(d for d in _yaml_docs(DEPLOY / "kuberay" / "raycluster.yaml")
               if d["kind"] == "RayCluster")
    assert doc["spec"]["enableInTreeAutoscaling"] is True
    for group in doc["spec"]["workerGroupSpecs"]:
        assert group.get("replicas", group["minReplicas"]) == 0 == group["minReplicas"], \
            f"{group['groupName']}: GPU nodes start only when a job asks for them"


def test_the_image_has_what_kuberay_runs_in_it() -> None:
    # KubeRay (1.5.x) gives Ray containers without probes of their own readiness and liveness
    # probes that exec `wget` against the dashboard agent (and on the head the dashboard).
    _, steps = _dockerfile()
    assert "wget" in _apt_packages(steps)
    # RayJob entrypoints and `workingDir` name the image's WORKDIR.
    assert [a for op, a in steps if op == "WORKDIR"][-1] == IMAGE_ROOT
    for path in RAY_MANIFESTS:
        for doc in _yaml_docs(path):
            for spec in _cluster_specs(doc):
                assert {c.get("workingDir") for c in _containers(spec)} == {IMAGE_ROOT}


@pytest.mark.parametrize("path", RAY_MANIFESTS, ids=lambda p: p.name)
def test_kuberay_security(path: Path) -> None:
    for doc in _yaml_docs(path):
        assert doc["kind"] not in ("Ingress", "Service"), "no externally exposed services"
        for spec in _cluster_specs(doc):
            head = spec["headGroupSpec"]
            # KubeRay binds the dashboard to 0.0.0.0 inside the pod unless told otherwise, so the
            # token must be on and the Service must stay inside the cluster.
            assert spec.get("authOptions", {}).get("mode") == "token"
            assert head.get("serviceType", "ClusterIP") == "ClusterIP"
            for c in _containers(spec):
                env = {var["name"]: var for var in c.get("env", [])}
                for var in env.values():
                    assert not (var["name"] == "RAY_AUTH_TOKEN" and "value" in var), \
                        "token inlined; use a Secret (authOptions does this)"
                    assert not (var["name"] == "RAY_AUTH_MODE"
                                and var.get("value") == "disabled")
                # The metrics exporter would listen on the pod IP without a token.
                assert env.get("RAY_enable_metrics_collection", {}).get("value") == "0", c["name"]


def _job_model(job: str) -> Any:
    from jntk_dist.workflows.assumption8 import Assumption8JobConfig
    from jntk_dist.workflows.eigen import EigenJobConfig
    from jntk_dist.workflows.eigenfeatures import EigenfeaturesJobConfig
    from jntk_dist.workflows.solve import SolveJobConfig
    from jntk_dist.workflows.drift import DriftConfig
    from jntk_dist.workflows.gram import GramJobConfig

    return {"gram": GramJobConfig, "solve": SolveJobConfig, "eigen": EigenJobConfig,
            "eigenfeatures": EigenfeaturesJobConfig, "assumption8": Assumption8JobConfig,
            "drift": DriftConfig}[job]


def test_rayjob_entrypoint_runs_a_shipped_job_with_a_valid_config() -> None:
    doc = next(d for d in _yaml_docs(DEPLOY / "kuberay" / "rayjob.yaml") if d["kind"] == "RayJob")
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "python"
    script = REPO / Path(argv[1]).relative_to(IMAGE_ROOT)
    config = REPO / Path(argv[2]).relative_to(IMAGE_ROOT)
    assert script.parent == REPO / "jobs" and script.exists() and config.exists()
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    cfg = load_config(config, _job_model(script.stem), overrides)
    assert str(cfg.output).startswith("/data/"), "the store must go to the shared volume"
    yaml.safe_load(doc["spec"]["runtimeEnvYAML"])


# ---- Dockerfile -------------------------------------------------------------------------


def _dockerfile() -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(ARG defaults, [(instruction, argument)]) with line continuations joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, arg = line.partition(" ")
            steps.append((op.upper(), arg.strip()))
    args = {}
    for op, arg in steps:
        if op == "ARG" and "=" in arg:
            k, v = arg.split("=", 1)
            args[k] = v
    return args, steps


def _dockerfile_env(steps: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for op, arg in steps:
        if op == "ENV":
            for word in shlex.split(arg):
                k, _, v = word.partition("=")
                env[k] = v
    return env


def _apt_packages(steps: list[tuple[str, str]]) -> set[str]:
    out = set()
    for op, arg in steps:
        if op == "RUN":
            for part in arg.split("&&"):
                words = part.split()
                if "apt-get" in words and "install" in words:
                    out |= {w for w in words[words.index("install") + 1:] if not w.startswith("-")}
    return out


def _expand(s: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), s)


def _pip_installs(command: str) -> list[list[str]]:
    """The words after `pip install` of each pip install in a shell line."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    parts: list[list[str]] = [[]]
    for word in lexer:
        if word in ("&&", ";", "||", "|", ">", "<"):
            parts.append([])
        else:
            parts[-1].append(word)
    return [words[words.index("install") + 1:] for words in parts
            if "pip" in words and "install" in words]


def _option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


def _image_requirements() -> list[str]:
    """What the Dockerfile's dependency layer installs: its own one-liner, run on pyproject.toml."""
    _, steps = _dockerfile()
    run = next(a for op, a in steps if op == "RUN" and "tomllib" in a)
    words = shlex.split(run)
    code = words[words.index("-c") + 1]
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    return out.split()


def _bootstrap_default(name: str) -> str:
    m = re.search(r'\$\{' + name + r':-([^}]*)\}', (REPO / "scripts" / "bootstrap.sh").read_text())
    assert m, f"scripts/bootstrap.sh has no default for {name}"
    return m[1]


def test_dockerfile_installs_as_the_scripts_do() -> None:
    args, steps = _dockerfile()
    base = _expand(next(a for op, a in steps if op == "FROM"), args)
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim", base), base
    installs = [(i, w) for i, (op, a) in enumerate(steps) if op == "RUN"
                for w in _pip_installs(_expand(a, args))]
    # torch first, pinned as the scripts pin it, from the index the scripts use by default.
    first_i, torch = installs[0]
    assert [w for w in torch if not w.startswith("-") and w != _option(torch, "--index-url")] \
        == [_bootstrap_default("TORCH_SPEC")]
    assert _option(torch, "--index-url") == _bootstrap_default("TORCH_INDEX") \
        == "https://download.pytorch.org/whl/cpu"
    # Then the dependencies, from pyproject.toml alone: nothing that changes with the code is
    # copied before them, so a code change reuses the torch and dependency layers.
    deps_i, deps = next((i, w) for i, w in installs if "-r" in w)
    package_i, package = next((i, w) for i, w in installs if "." in w)
    assert first_i < deps_i < package_i
    copied_before = [a for op, a in steps[:deps_i] if op == "COPY"]
    assert [w for a in copied_before for w in a.split()[:-1] if not w.startswith("--")] \
        == ["pyproject.toml"], copied_before
    assert "--no-deps" in package
    copied_before_package = " ".join(a for op, a in steps[:package_i] if op == "COPY")
    assert "jntk_dist" in copied_before_package and "README.md" in copied_before_package
    # The dependency list is pyproject's dependencies and its s3 extra (s3fs, boto3).
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert _image_requirements() == [
        r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["s3"]]
    # Everything COPY'd exists.
    for op, arg in steps:
        if op == "COPY":
            for src in [w for w in arg.split() if not w.startswith("--")][:-1]:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
    users = [a for op, a in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    env = _dockerfile_env(steps)
    assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in env
    assert env["RAY_enable_metrics_collection"] == "0"
    assert {"procps", "tini", "rsync", "wget"} <= _apt_packages(steps)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ".git" in ignore and "runs" in ignore and ".venv" in ignore


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def test_the_shipped_ray_environment_turns_the_metrics_exporter_off(tmp_path: Path) -> None:
    """A real head with the image's RAY_* environment: its dashboard agent starts no Prometheus
    exporter (on a node whose IP is not loopback it would listen on 0.0.0.0 without a token; here
    the head is on 127.0.0.1, the agent's own record of its exporter port says whether it is on)."""
    import signal
    import socket
    import time
    import uuid

    import psutil

    image_env = {k: v for k, v in _dockerfile_env(_dockerfile()[1]).items() if k.startswith("RAY_")}
    assert image_env["RAY_enable_metrics_collection"] == "0"
    temp_dir = Path("/tmp") / f"rd{uuid.uuid4().hex[:8]}"  # short: socket paths are limited
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS")}
    env.update(image_env, RAY_AUTH_TOKEN=token)
    gcs, dash, client, agent_http, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = \
        _free_ports(9)
    ray_cli = str(Path(sys.executable).parent / "ray")
    cmd = [ray_cli, "start", "--head", "--block", "--temp-dir", str(temp_dir),
           "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--ray-client-server-port", str(client), "--dashboard-agent-listen-port",
           str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(env_agent), "--metrics-export-port", str(metrics),
           "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
           "--num-cpus", "1", "--object-store-memory", str(100 * 1024 ** 2),
           "--disable-usage-stats"]
    temp_dir.mkdir()
    log_path = tmp_path / "head.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        record = None
        while record is None:
            assert proc.poll() is None, "ray start exited:\n" + log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no agent came up:\n" + log_path.read_text()[-3000:]
            found = sorted(temp_dir.glob("session_*/metrics_export_port_*"))
            if found and found[0].read_text().strip():
                record = found[0].read_text().strip()
            time.sleep(1)
        assert record == "-1", f"the dashboard agent exports metrics on port {record}"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", metrics), timeout=2).close()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        strays = []
        for p in psutil.process_iter():
            try:
                if p.pid != os.getpid() and (any(str(temp_dir) in a for a in p.cmdline())
                                             or p.environ().get("RAY_AUTH_TOKEN") == token):
                    strays.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        kill_processes(strays)
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


# ---- the install scripts ----------------------------------------------------------------

_FAKE_PYTHON = """#!/usr/bin/env bash
# Stand-in interpreter: logs `-m pip|pytest|jntk_dist.cli ...` calls, makes a venv as a folder.
case "$1 $2" in
    "-m venv") mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;;
    "-m pip"|"-m jntk_dist.cli") echo "$*" >> "$FAKE_LOG" ;;
    "-m pytest") echo "$*" >> "$FAKE_LOG"; exit "${FAKE_PYTEST_RC:-0}" ;;
    *) exec "$REAL_PYTHON" "$@" ;;
esac
"""


def _run_script(script: str, tmp_path: Path, *args: str, **env: str) -> tuple[int, list[str], str]:
    fake = tmp_path / "python3"
    fake.write_text(_FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("VENV", "TORCH_SPEC", "TORCH_INDEX", "INSTALL", "VIRTUAL_ENV")}
    full_env.update({"PYTHON": str(fake), "VENV": str(tmp_path / "venv"), "FAKE_LOG": str(log),
                     "REAL_PYTHON": sys.executable, **env})
    proc = subprocess.run(["bash", script, *args], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True, timeout=120)
    calls = log.read_text().splitlines() if log.exists() else []
    return proc.returncode, calls, proc.stdout + proc.stderr


def test_test_script_makes_a_venv_installs_cpu_torch_then_the_package(tmp_path: Path) -> None:
    rc, calls, out = _run_script(str(REPO / "scripts" / "test.sh"), tmp_path, "-x")
    assert rc == 0, out
    assert (tmp_path / "venv" / "bin" / "python").exists()
    assert calls == [
        "-m pip install --progress-bar off --no-deps torch==2.13.0 "
        "--index-url https://download.pytorch.org/whl/cpu",
        "-m pip install --progress-bar off -e .[dev]",
        "-m pytest -q --timeout=900 --durations=15 -x",
    ]
    # A rerun installs nothing; the quickstart needs nothing more than the [dev] install.
    rc, calls, out = _run_script(str(REPO / "scripts" / "test.sh"), tmp_path)
    assert rc == 0 and calls == ["-m pytest -q --timeout=900 --durations=15"], (calls, out)
    rc, calls, out = _run_script(str(REPO / "scripts" / "quickstart.sh"), tmp_path, "--overwrite")
    assert rc == 0 and calls == ["-m jntk_dist.cli gram configs/quickstart.yaml --overwrite"], out


def test_quickstart_script_installs_only_the_package_and_knobs_apply(tmp_path: Path) -> None:
    rc, calls, out = _run_script(str(REPO / "scripts" / "quickstart.sh"), tmp_path,
                                 TORCH_INDEX="https://download.pytorch.org/whl/cu128",
                                 TORCH_SPEC="torch==2.13.0")
    assert rc == 0, out
    assert calls == [
        "-m pip install --progress-bar off --no-deps torch==2.13.0 "
        "--index-url https://download.pytorch.org/whl/cu128",
        "-m pip install --progress-bar off -e .",
        "-m jntk_dist.cli gram configs/quickstart.yaml",
    ]
    # Another torch choice is a new install; TORCH_INDEX=pypi leaves the index to pip.
    rc, calls, out = _run_script(str(REPO / "scripts" / "quickstart.sh"), tmp_path,
                                 TORCH_INDEX="pypi")
    assert rc == 0 and calls[0] == "-m pip install --progress-bar off --no-deps torch==2.13.0", out
    # INSTALL=0 runs with what is there; VENV=system installs into $PYTHON itself.
    rc, calls, out = _run_script(str(REPO / "scripts" / "quickstart.sh"), tmp_path, INSTALL="0",
                                 VENV=str(tmp_path / "absent"))
    assert rc != 0 and "no interpreter" in out and not calls
    rc, calls, out = _run_script(str(REPO / "scripts" / "test.sh"), tmp_path, VENV="system")
    assert rc == 0 and len(calls) == 3 and not (tmp_path / "system").exists(), out


def test_scripts_refuse_an_old_python(tmp_path: Path) -> None:
    old = tmp_path / "python2"
    old.write_text("#!/bin/sh\nexit 1\n")
    old.chmod(0o755)
    rc, calls, out = _run_script(str(REPO / "scripts" / "test.sh"), tmp_path, PYTHON=str(old))
    assert rc != 0 and "older than Python 3.10" in out and not calls


def test_ci_fails_when_pytest_collects_nothing(tmp_path: Path) -> None:
    rc, calls, out = _run_script(str(REPO / ".ci" / "run"), tmp_path, FAKE_PYTEST_RC="5")
    assert rc == 1 and "collected no tests" in out, out
    assert calls[-1].startswith("-m pytest")
    rc, _, out = _run_script(str(REPO / ".ci" / "run"), tmp_path, FAKE_PYTEST_RC="1")
    assert rc == 1
    # For real: the suite's own pytest, with a selection that matches nothing.
    proc = subprocess.run(
        ["bash", ".ci/run", "tests/test_deploy.py", "-k", "no_such_test_anywhere",
         "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "INSTALL": "0", "VENV": "system", "PYTHON": sys.executable})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "collected no tests" in proc.stderr


def test_readme_install_is_the_two_scripts() -> None:
    readme = (REPO / "README.md").read_text()
    install = readme[:readme.index("\n## ")]
    for script in ("scripts/quickstart.sh", "scripts/test.sh"):
        assert f"./{script}" in install
        assert os.access(REPO / script, os.X_OK), f"{script} is not executable"
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()
    # The CPU/CUDA choice is spelt out with the index URLs the scripts and the Dockerfile use.
    assert "https://download.pytorch.org/whl/cpu" in install
    assert re.search(r"https://download\.pytorch\.org/whl/cu\d+", install)


# ---- security across the repository -----------------------------------------------------


def test_no_open_unauthenticated_dashboard_anywhere() -> None:
    for path in sorted(DEPLOY.rglob("*")) + sorted((REPO / "configs").glob("*.yaml")):
        if not path.is_file():
            continue
        text = path.read_text()
        assert not re.search(r"dashboard[-_]host[=:\s\"']+0\.0\.0\.0", text), path
        assert "RAY_AUTH_MODE=disabled" not in text and not re.search(
            r"RAY_AUTH_MODE[\"']?\s*[:=]\s*[\"']?disabled", text), path
        assert not re.search(r"RAY_AUTH_TOKEN=[\"']?[0-9a-f]{16,}", text), path


def test_configs_and_stores_are_never_unpickled_or_evaluated(tmp_path: Path) -> None:
    from jntk_dist.workflows.gram import GramJobConfig

    sources = [p for room in ("workflows", "store", "cli")
               for p in sorted((REPO / "jntk_dist" / room).rglob("*.py"))]
    sources += sorted((REPO / "jobs").glob("*.py")) + sorted((REPO / "examples").glob("*.py"))
    for path in sources:
        code = path.read_text()
        for pattern in (r"pickle\.loads?\(", r"^\s*(import|from) (cloud)?pickle", r"\beval\(",
                        r"\bexec\(", r"yaml\.load\(", r"unsafe_load", r"allow_pickle\s*=\s*True",
                        r"yaml\.(Full|Unsafe)?Loader"):
            assert not re.search(pattern, code, re.M), f"{path.relative_to(REPO)}: {pattern}"
    # A YAML tag that would run code under an unsafe loader is just an error.
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"output: !!python/object/apply:os.system ['touch {marker}']\n"
                    "dataset: {name: banknote}\nkernel: {depth: 1}\n")
    with pytest.raises(ConfigError):
        load_config(evil, GramJobConfig)
    assert not marker.exists()
