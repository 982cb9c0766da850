"""deploy/: every file checked as far as this machine allows (no cloud, Kubernetes or Docker).

* runtime_env.yaml: a Ray runtime_env; the package Ray would upload for ``--working-dir .`` is
  built with Ray's own packaging code and must hold the jobs, configs and package, and none of
  .git, results or caches.
* cluster.yaml: validated by the Ray cluster launcher's own schema (``ray up`` runs the same check).
* kuberay/*.yaml: a structural schema of the RayCluster / RayJob fields used (unknown fields are
  errors, as the CRDs' structural schemas make them); rayVersion is the installed Ray; the RayJob's
  entrypoint names an existing job and a config that validates with its overrides.
* Dockerfile: the install commands are the README's (torch pinned first, then the package).
* Security: the dashboard / Jobs API never listens on 0.0.0.0 without token auth; no token is
  written into any file; configs are read without pickle or eval.
"""

from __future__ import annotations

import copy
import re
import shlex
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

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
    prepared = _validate_cluster(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # The check bites: a misspelt key is refused by the same schema.
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["max_workerz"] = 2
    with pytest.raises(Exception, match="max_workerz"):
        _validate_cluster(broken)

    gpu_families = ("g4dn.", "g5.", "g6.", "g6e.", "p3.", "p4d.", "p5.")
    gpu_workers = [name for name, node in config["available_node_types"].items()
                   if name != config["head_node_type"]
                   and str(node["node_config"].get("InstanceType", "")).startswith(gpu_families)]
    assert gpu_workers, "no GPU worker node type"
    assert all(config["available_node_types"][n]["max_workers"] >= 1 for n in gpu_workers)


def test_cluster_launcher_security() -> None:
    config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head.replace(" --dashboard-host ", " --dashboard-host=")
    run_options = " ".join(config["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in run_options  # every Ray process in the containers
    # The token reaches the nodes as a file mount, never inlined.
    assert any(dst.endswith(".ray/auth_token") for dst in config["file_mounts"])
    assert "RAY_AUTH_TOKEN=" not in (DEPLOY / "cluster.yaml").read_text()


# ---- KubeRay ----------------------------------------------------------------------------

_RESOURCES = {"type": "object", "additionalProperties": False,
              "properties": {"requests": {"type": "object"}, "limits": {"type": "object"}},
              "required": ["limits"]}
_CONTAINER = {
    "type": "object", "required": ["name", "image", "resources"],
    "properties": {"name": {"type": "string"}, "image": {"type": "string", "minLength": 3},
                   "resources": _RESOURCES, "workingDir": {"type": "string"},
                   "ports": {"type": "array"}, "volumeMounts": {"type": "array"},
                   "env": {"type": "array"}},
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
        "autoscalerOptions": {"type": "object"},
        "headServiceAnnotations": {"type": "object"},
        "headGroupSpec": {
            "type": "object", "required": ["rayStartParams", "template"],
            "additionalProperties": False,
            "properties": {"serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                           "rayStartParams": _RAY_START_PARAMS, "template": _POD_TEMPLATE}},
        "workerGroupSpecs": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["groupName", "rayStartParams", "template", "minReplicas", "maxReplicas"],
            "properties": {"groupName": {"type": "string"}, "replicas": {"type": "integer"},
                           "minReplicas": {"type": "integer", "minimum": 0},
                           "maxReplicas": {"type": "integer", "minimum": 1},
                           "rayStartParams": _RAY_START_PARAMS, "template": _POD_TEMPLATE}}},
    },
}
_METADATA = {"type": "object", "required": ["name"]}
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
                                      "ttlSecondsAfterFinished": {"type": "integer"},
                                      "activeDeadlineSeconds": {"type": "integer"},
                                      "backoffLimit": {"type": "integer"},
                                      "submissionMode": {"enum": ["K8sJobMode", "HTTPMode",
                                                                  "InteractiveMode",
                                                                  "SidecarMode"]},
                                      "rayClusterSpec": _CLUSTER_SPEC}}}},
    "PersistentVolumeClaim": {"type": "object", "required": ["apiVersion", "kind", "metadata",
                                                             "spec"],
                              "properties": {"apiVersion": {"const": "v1"},
                                             "metadata": _METADATA}},
}
MANIFESTS = sorted((DEPLOY / "kuberay").glob("*.yaml"))


def _cluster_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "RayCluster":
        return [doc["spec"]]
    if doc["kind"] == "RayJob":
        return [doc["spec"]["rayClusterSpec"]]
    return []


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kuberay_manifest_structure(path: Path) -> None:
    docs = _yaml_docs(path)
    assert any(d["kind"] in ("RayCluster", "RayJob") for d in docs)
    for doc in docs:
        assert doc["kind"] in SCHEMAS, f"{path.name}: unexpected kind {doc['kind']}"
        jsonschema.validate(doc, SCHEMAS[doc["kind"]])
        for spec in _cluster_specs(doc):
            assert spec["rayVersion"] == ray.__version__
            head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
            assert head["image"].split(":")[0].endswith("jntk-dist")
            groups = spec.get("workerGroupSpecs", [])
            assert groups, "no worker group"
            for group in groups:
                replicas = group.get("replicas", group["minReplicas"])
                assert group["minReplicas"] <= replicas <= group["maxReplicas"]
            gpu = [g for g in groups if any(
                "nvidia.com/gpu" in c["resources"]["limits"]
                for c in g["template"]["spec"]["containers"])]
            assert gpu, "no GPU worker group"
            claims = {v["persistentVolumeClaim"]["claimName"]
                      for t in [spec["headGroupSpec"]["template"]]
                      + [g["template"] for g in groups]
                      for v in t["spec"].get("volumes", []) if "persistentVolumeClaim" in v}
            assert len(claims) == 1, "head and workers must share one store volume"
    # The schema bites: an unknown field in a worker group is refused.
    broken = copy.deepcopy(next(d for d in docs if d["kind"] in ("RayCluster", "RayJob")))
    spec = broken["spec"] if broken["kind"] == "RayCluster" else broken["spec"]["rayClusterSpec"]
    spec["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(broken, SCHEMAS[broken["kind"]])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kuberay_security(path: Path) -> None:
    for doc in _yaml_docs(path):
        assert doc["kind"] not in ("Ingress", "Service"), "no externally exposed services"
        for spec in _cluster_specs(doc):
            head = spec["headGroupSpec"]
            # KubeRay binds the dashboard to 0.0.0.0 inside the pod unless told otherwise, so the
            # token must be on and the Service must stay inside the cluster.
            assert spec.get("authOptions", {}).get("mode") == "token"
            assert head.get("serviceType", "ClusterIP") == "ClusterIP"
            for group in [head] + spec["workerGroupSpecs"]:
                for c in group["template"]["spec"]["containers"]:
                    for var in c.get("env", []):
                        assert not (var["name"] == "RAY_AUTH_TOKEN" and "value" in var), \
                            "token inlined; use a Secret (authOptions does this)"
                        assert not (var["name"] == "RAY_AUTH_MODE"
                                    and var.get("value") == "disabled")


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


def _expand(s: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), s)


def _pip_targets(command: str) -> list[str]:
    """Package arguments of each `pip install` in a shell line (options and extras dropped)."""
    out = []
    for part in re.split(r"&&|;|\|\|", command):
        words = shlex.split(part)
        if "pip" in words and "install" in words:
            rest = words[words.index("install") + 1:]
            skip = False
            for w in rest:
                if skip:
                    skip = False
                    continue
                if w in ("--index-url", "-i", "--extra-index-url", "-r", "-c"):
                    skip = True
                    continue
                if w.startswith("-"):
                    continue
                out.append(re.sub(r"\[.*\]$", "", w))
    return out


def test_dockerfile_installs_as_the_readme_says() -> None:
    args, steps = _dockerfile()
    base = _expand(next(a for op, a in steps if op == "FROM"), args)
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim", base), base
    installs = [t for op, a in steps if op == "RUN" for t in _pip_targets(_expand(a, args))]
    readme = REPO / "README.md"
    readme_cmds = [line for line in readme.read_text().splitlines() if "pip install" in line]
    ci_cmds = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
               if "pip install" in line and not line.lstrip().startswith("#")]
    for source, lines in (("README.md", readme_cmds), (".ci/run", ci_cmds)):
        wanted = [t for line in lines for t in _pip_targets(line)]
        assert wanted, f"no pip install found in {source}"
        # Same packages, same pins, same order (torch before the package).
        assert installs == wanted, f"Dockerfile installs {installs}, {source} says {wanted}"
    # Everything COPY'd exists, and the package is copied before `pip install .`.
    for op, arg in steps:
        if op == "COPY":
            for src in [w for w in arg.split() if not w.startswith("--")][:-1]:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
    users = [a for op, a in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    env_text = " ".join(a for op, a in steps if op == "ENV")
    assert "RAY_AUTH_MODE=token" in env_text and "RAY_AUTH_TOKEN=" not in env_text
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ".git" in ignore and "runs" in ignore


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
