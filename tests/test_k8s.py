"""Kubernetes manifests, validated offline (no API server here): kustomize renders, KubeRay
CRD schemas in strict mode, Serve's own config schema, built-in kinds, Milvus Helm values,
the Dockerfile — and proof that each check catches what it is there to catch."""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
import tomllib

import jsonschema
import pytest
import yaml

from harness.fixtures import REPO

SHARED = REPO.parent / "shared" / "k8s-schemas"
OVERLAYS = ["cpu", "gpu"]
CRDS = {"RayService": "ray.io_rayservices.yaml", "RayJob": "ray.io_rayjobs.yaml"}
KUBERNETES_VERSION = "1.32.0"

spec = importlib.util.spec_from_file_location("serve_config", REPO / "k8s" / "serve_config.py")
serve_config = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve_config)


def render(overlay: str, folder: str = "k8s/overlays") -> list[dict]:
    """A kustomization (an overlay by default) as kustomize renders it."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to render the kustomize overlays")
    out = subprocess.run([kubectl, "kustomize", str(REPO / folder / overlay)], capture_output=True,
                         text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def strict(schema: dict) -> dict:
    """The CRD's schema, refusing unknown fields wherever it lists properties (like kubeconform)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def crd_validator(kind: str):
    crd = yaml.safe_load((SHARED / "kuberay-v1.7.0" / CRDS[kind]).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


def crd_errors(doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in crd_validator(doc["kind"]).iter_errors(doc)]


def by_kind(docs: list[dict], kind: str) -> dict:
    return next(d for d in docs if d["kind"] == kind)


# -- rendering and the CRDs -------------------------------------------------------------------
def test_overlays_render_with_every_kind(rendered):
    overlay, docs = rendered
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "RayJob", "RayService", "Secret"]
    assert all(d["metadata"].get("namespace") == "lookalike" for d in docs)
    images = {c["image"] for d in docs if d["kind"].startswith("Ray") for c in _containers(d)}
    assert images == {f"ghcr.io/lookalike/lookalike:0.1.0-{overlay}"}


def _containers(doc: dict):
    cluster = doc["spec"].get("rayClusterConfig") or doc["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        yield from group["template"]["spec"]["containers"]


def test_ray_resources_validate_against_kuberay_crds_strictly(rendered):
    _, docs = rendered
    for doc in docs:
        if doc["kind"] in CRDS:
            assert crd_errors(doc) == [], doc["kind"]


def test_cluster_shape(rendered):
    overlay, docs = rendered
    service = by_kind(docs, "RayService")["spec"]["rayClusterConfig"]
    assert service["rayVersion"] == _ray_version()
    assert service["enableInTreeAutoscaling"] is True and service["autoscalerOptions"]["version"] == "v2"
    assert service["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in service["workerGroupSpecs"]}
    assert set(groups) == ({"cpu", "gpu"} if overlay == "gpu" else {"cpu"})
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert container["readinessProbe"] and container["livenessProbe"]
        refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
        assert refs == {"lookalike-config", "lookalike-secrets"}
    if overlay == "gpu":
        gpu = groups["gpu"]["template"]["spec"]
        assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
        job_groups = {g["groupName"] for g in by_kind(docs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
        assert job_groups == {"cpu", "gpu"}
    job = by_kind(docs, "RayJob")["spec"]
    assert job["entrypoint"].startswith("python -m ingest ") and job["shutdownAfterJobFinishes"] is True
    assert job["ttlSecondsAfterFinished"] > 0 and job["suspend"] is True


def _ray_version() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(re.search(r"==([\d.]+)", d).group(1) for d in deps if d.startswith("ray["))


# -- serveConfigV2 -----------------------------------------------------------------------------
def test_serve_config_v2_is_valid_imports_and_builds_the_app(rendered, monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    overlay, docs = rendered
    text = by_kind(docs, "RayService")["spec"]["serveConfigV2"]
    schema = ServeDeploySchema.model_validate(yaml.safe_load(text))
    assert schema.http_options.host == "0.0.0.0"  # reachable by the Kubernetes Service
    app = schema.applications[0]
    embedder = next(d for d in app.deployments if d.name == "Embedder")
    assert (embedder.ray_actor_options.num_gpus == 1) == (overlay == "gpu")
    assert unknown_serve_fields(yaml.safe_load(text)) == []
    assert {d.name for d in app.deployments} == {"Ingress", "Embedder", "Searcher"}
    assert all(d.autoscaling_config for d in app.deployments)

    # The import path imports and builds the app with the cluster's settings (ConfigMap env).
    config = by_kind(docs, "ConfigMap")["data"]
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    module_name, attr = app.import_path.split(":")
    builder = getattr(importlib.import_module(module_name), attr)
    from ray.serve import Application

    built = builder(app.args)
    assert isinstance(built, Application)


def test_serve_config_v2_matches_config_serve_yaml():
    assert serve_config.check() == []
    generated = yaml.safe_load(serve_config.generate("cpu"))
    local = yaml.safe_load((REPO / "config" / "serve.yaml").read_text())
    # The two documented differences: the proxy listens for the Service, the Embedder keeps two replicas.
    local["http_options"]["host"] = "0.0.0.0"
    embedder = next(d for d in local["applications"][0]["deployments"] if d["name"] == "Embedder")
    embedder["autoscaling_config"]["min_replicas"] = 2
    assert generated == local


def test_serve_config_drift_is_caught(tmp_path):
    drifted = tmp_path / "serve.yaml"
    config = yaml.safe_load((REPO / "config" / "serve.yaml").read_text())
    config["applications"][0]["deployments"][1]["autoscaling_config"]["max_replicas"] = 99
    drifted.write_text(yaml.safe_dump(config))
    problems = serve_config.check(serve_yaml=drifted)
    assert len(problems) == 2 and all("differs from config/serve.yaml" in p for p in problems)


# -- catching mistakes -------------------------------------------------------------------------
def _set(doc: dict, path: list, value) -> dict:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


@pytest.mark.parametrize("mutation, expect", [
    # a misspelled field
    (lambda d: _set(d, ["spec", "rayClusterConfig", "headGroupSpec", "rayStartParms"], {}),
     "Additional properties are not allowed ('rayStartParms'"),
    (lambda d: _set(d, ["spec", "rayClusterConfig", "workerGroupSpecs", 0, "maxReplica"], 3),
     "Additional properties are not allowed ('maxReplica'"),
    # a wrong type
    (lambda d: _set(d, ["spec", "rayClusterConfig", "workerGroupSpecs", 0, "replicas"], "two"),
     "'two' is not of type 'integer'"),
    (lambda d: _set(d, ["spec", "rayClusterConfig", "enableInTreeAutoscaling"], "yes"),
     "'yes' is not of type 'boolean'"),
])
def test_strict_validation_catches_typos_and_wrong_types(mutation, expect):
    service = by_kind(render("cpu"), "RayService")
    errors = crd_errors(mutation(service))
    assert any(expect in e for e in errors), errors


def unknown_serve_fields(config: dict) -> list[str]:
    """Serve's schema ignores unknown keys; a misspelled one would silently do nothing."""
    from ray.serve.schema import (DeploymentSchema, HTTPOptionsSchema, RayActorOptionsSchema,
                                  ServeApplicationSchema, ServeDeploySchema)
    from ray.serve.config import AutoscalingConfig

    def extra(data: dict, model, where: str) -> list[str]:
        return [f"{where}.{k}" for k in data if k not in model.model_fields]

    found = extra(config, ServeDeploySchema, "config") + extra(config.get("http_options", {}), HTTPOptionsSchema,
                                                               "http_options")
    for app in config.get("applications", []):
        found += extra(app, ServeApplicationSchema, app.get("name", "app"))
        for dep in app.get("deployments", []):
            where = f"{app.get('name')}.{dep.get('name')}"
            found += extra(dep, DeploymentSchema, where)
            found += extra(dep.get("autoscaling_config") or {}, AutoscalingConfig, where + ".autoscaling_config")
            found += extra(dep.get("ray_actor_options") or {}, RayActorOptionsSchema, where + ".ray_actor_options")
    return found


def test_invalid_serve_config_is_caught():
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(serve_config.generate("cpu"))
    typo = copy.deepcopy(config)
    typo["applications"][0]["deployments"][0]["max_ongoing_request"] = 5
    typo["applications"][0]["deployments"][1]["autoscaling_config"]["max_replica"] = 5
    assert unknown_serve_fields(typo) == ["lookalike.Ingress.max_ongoing_request",
                                          "lookalike.Embedder.autoscaling_config.max_replica"]
    wrong_type = copy.deepcopy(config)
    wrong_type["applications"][0]["deployments"][0]["max_ongoing_requests"] = "lots"
    with pytest.raises(ValidationError):
        ServeDeploySchema.model_validate(wrong_type)


# -- built-in kinds, Milvus values, Dockerfile --------------------------------------------------
def test_builtin_kinds_validate_with_kubernetes_validate(rendered):
    import kubernetes_validate

    _, docs = rendered
    for doc in docs:
        if doc["kind"] in ("ConfigMap", "Secret"):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(by_kind(docs, "ConfigMap"))
    broken["datta"] = broken.pop("data")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_secret_holds_placeholders_and_config_has_no_secrets(rendered):
    _, docs = rendered
    secret = by_kind(docs, "Secret")
    assert set(secret["data"]) >= {"LOOKALIKE_STORE__S3__ACCESS_KEY", "LOOKALIKE_STORE__S3__SECRET_KEY"}
    config = by_kind(docs, "ConfigMap")["data"]
    assert not [k for k in config if re.search(r"KEY|TOKEN|SECRET|PASSWORD", k)]
    assert config["LOOKALIKE_MILVUS__URI"].startswith("http://") and config["LOOKALIKE_STORE__BACKEND"] == "s3"


def _keys(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from _keys(value, prefix + (key,))


def _unknown_keys(values: dict, reference: dict) -> list[str]:
    known = set(_keys(reference))
    unknown = []
    for path in _keys(values):
        parent = path[:-1]
        # Below a key whose chart default is an empty map (resources: {}), anything goes.
        if path not in known and not any(p in known and _get(reference, p) == {} for p in
                                         (parent[:i] for i in range(1, len(parent) + 1))):
            unknown.append(".".join(path))
    return unknown


def _get(node, path):
    for key in path:
        node = node[key]
    return node


@pytest.mark.parametrize("name", ["values-standalone.yaml", "values-cluster.yaml"])
def test_milvus_values_use_only_chart_keys(name):
    reference = yaml.safe_load((SHARED / "milvus-helm" / "values.yaml").read_text())
    values = yaml.safe_load((REPO / "k8s" / "milvus" / name).read_text())
    assert _unknown_keys(values, reference) == []
    assert _unknown_keys({"standalone": {"replica": 1}}, reference) == ["standalone.replica"]


def test_dockerfile_pins_the_ray_image_and_bakes_no_secrets():
    text = (REPO / "Dockerfile").read_text()
    assert f"rayproject/ray:{_ray_version()}-py311-cpu" in text
    assert f"rayproject/ray:{_ray_version()}-py311-gpu" in text  # the documented CUDA variant
    assert "pip install --no-cache-dir ." in text
    assert not re.search(r"(?im)^\s*(ENV|ARG)\s+\S*(KEY|SECRET|TOKEN|PASSWORD)", text)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "data", ".git"} <= set(ignored)
