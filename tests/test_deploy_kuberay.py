"""deploy/kuberay/*.yaml: a structural schema of the RayCluster / RayJob fields used, written from
the KubeRay ray.io/v1 CRD (unknown fields are errors, as the CRDs' structural schemas make them);
rayVersion is the installed Ray; the RayJob's entrypoint names an existing job and a config that
validates with its overrides; the shared volume claim is a file of its own, so applying the RayJob
starts no other cluster; the image has `wget` for KubeRay's default probes.
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from deploy_files import (DEPLOY, IMAGE_ROOT, REPO, apt_packages, dockerfile, is_cuda_image,
                          yaml_docs)
from jntk_dist.workflows.config import load_config


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
                 if any(d["kind"] in ("RayCluster", "RayJob") for d in yaml_docs(p))]


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
    docs = yaml_docs(path)
    assert docs
    for doc in docs:
        assert doc["kind"] in SCHEMAS, f"{path.name}: unexpected kind {doc['kind']}"
        jsonschema.validate(doc, SCHEMAS[doc["kind"]])


@pytest.mark.parametrize("path", RAY_MANIFESTS, ids=lambda p: p.name)
def test_kuberay_manifest_structure(path: Path) -> None:
    docs = yaml_docs(path)
    assert [d["kind"] for d in docs].count("PersistentVolumeClaim") == 0, \
        "the volume claim lives in pvc.yaml, applied once for the RayCluster and the RayJob"
    for doc in docs:
        for spec in _cluster_specs(doc):
            assert spec["rayVersion"] == ray.__version__
            head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
            assert head["image"].split(":")[0].endswith("jntk-dist")
            assert not is_cuda_image(head["image"]), "the head runs the CPU image"
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
                assert all(is_cuda_image(c["image"]) for c in g["template"]["spec"]["containers"])
            claims = {v["persistentVolumeClaim"]["claimName"]
                      for t in [spec["headGroupSpec"]["template"]]
                      + [g["template"] for g in groups]
                      for v in t["spec"].get("volumes", []) if "persistentVolumeClaim" in v}
            assert len(claims) == 1, "head and workers must share one store volume"
            pvcs = {d["metadata"]["name"] for p in MANIFESTS for d in yaml_docs(p)
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
    doc = next(d for d in yaml_docs(DEPLOY / "kuberay" / "raycluster.yaml")
               if d["kind"] == "RayCluster")
    assert doc["spec"]["enableInTreeAutoscaling"] is True
    for group in doc["spec"]["workerGroupSpecs"]:
        assert group.get("replicas", group["minReplicas"]) == 0 == group["minReplicas"], \
            f"{group['groupName']}: GPU nodes start only when a job asks for them"


def test_the_image_has_what_kuberay_runs_in_it() -> None:
    # KubeRay (1.5.x) gives Ray containers without probes of their own readiness and liveness
    # probes that exec `wget` against the dashboard agent (and on the head the dashboard).
    _, steps = dockerfile()
    assert "wget" in apt_packages(steps)
    # RayJob entrypoints and `workingDir` name the image's WORKDIR.
    assert [a for op, a in steps if op == "WORKDIR"][-1] == IMAGE_ROOT
    for path in RAY_MANIFESTS:
        for doc in yaml_docs(path):
            for spec in _cluster_specs(doc):
                assert {c.get("workingDir") for c in _containers(spec)} == {IMAGE_ROOT}


@pytest.mark.parametrize("path", RAY_MANIFESTS, ids=lambda p: p.name)
def test_kuberay_security(path: Path) -> None:
    for doc in yaml_docs(path):
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
    doc = next(d for d in yaml_docs(DEPLOY / "kuberay" / "rayjob.yaml") if d["kind"] == "RayJob")
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "python"
    script = REPO / Path(argv[1]).relative_to(IMAGE_ROOT)
    config = REPO / Path(argv[2]).relative_to(IMAGE_ROOT)
    assert script.parent == REPO / "jobs" and script.exists() and config.exists()
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    cfg = load_config(config, _job_model(script.stem), overrides)
    assert str(cfg.output).startswith("/data/"), "the store must go to the shared volume"
    yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
