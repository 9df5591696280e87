"""The KubeRay manifests in cluster/: CRD schema validation plus the rules the schema cannot check.

The KubeRay v1.7 CRD schemas (``openAPIV3Schema`` of ``ray.io/v1``) catch wrong
types and structure, but no object forbids unknown fields, CEL rules are not
evaluated, ``submissionMode`` has no enum, and operator-side rules (TTL needs
``shutdownAfterJobFinishes``) are absent (see /work/shared/kuberay/SOURCE.md).
So :func:`manifest_problems` checks what we rely on; each rule has a negative
test that mutates a loaded manifest in memory and expects its message.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER_DIR = REPO / "cluster"
SCHEMA_DIR = REPO.parent / "shared" / "kuberay"
SCHEMA_FILES = {"RayJob": "rayjobs.v1.schema.json", "RayCluster": "rayclusters.v1.schema.json"}
# Plain Kubernetes kinds we ship next to the Ray resources (no CRD schema for them here).
OTHER_KINDS = {"PersistentVolumeClaim", "Pod"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
EXPOSING_SERVICE_TYPES = {"LoadBalancer", "NodePort"}
CREDENTIAL_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)
GPU = "nvidia.com/gpu"


# --------------------------------------------------------------------------- loading

def manifest_files() -> list[Path]:
    return sorted(CLUSTER_DIR.glob("*.yaml"))


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_documents() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p.name}#{i}", doc) for p in manifest_files() for i, doc in enumerate(load_documents(p))]


DOCS = all_documents()
RAY_DOCS = [(name, doc) for name, doc in DOCS if doc.get("kind") in SCHEMA_FILES]


def _doc(name: str) -> dict[str, Any]:
    """A fresh deep copy of a manifest document, to mutate in negative tests."""
    return copy.deepcopy(dict(DOCS)[name])


# --------------------------------------------------------------------------- our rules

def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster spec of a RayCluster, or the rayClusterSpec of a RayJob."""
    spec = doc["spec"]
    return spec["rayClusterSpec"] if doc["kind"] == "RayJob" else spec


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) for the head and every worker group."""
    cs = cluster_spec(doc)
    yield "headGroupSpec", cs["headGroupSpec"]["template"]["spec"]
    for group in cs.get("workerGroupSpecs") or []:
        yield f"workerGroupSpecs[{group.get('groupName')}]", group["template"]["spec"]


def image_ray_version(image: str) -> str | None:
    """The Ray version an image tag names: rayproject/ray:X.Y.Z-... or <repo>:...-rayX.Y.Z-..."""
    repo, _, tag = image.rpartition(":")
    if repo.endswith(("rayproject/ray", "rayproject/ray-ml")):
        m = re.match(r"(\d+\.\d+\.\d+)", tag)
    else:
        m = re.search(r"ray-?(\d+\.\d+\.\d+)", tag)
    return m.group(1) if m else None


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every (path, key, value) of nested dicts/lists."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _runtime_env(doc: dict[str, Any]) -> dict[str, Any]:
    text = doc["spec"].get("runtimeEnvYAML") or ""
    return yaml.safe_load(text) or {}


# jobs/<script>.py -> the `aide-ray` subcommand it runs (the scripts are thin wrappers).
ENTRYPOINT_SCRIPTS = {"jobs/train_aide.py": "train", "jobs/tune_aide.py": "tune"}


class _StrictParser(argparse.ArgumentParser):
    def error(self, message: str):  # raise instead of printing usage and exiting
        raise ValueError(message)


def entrypoint_args(entrypoint: str) -> tuple[str, argparse.Namespace]:
    """Parse ``python jobs/<script>.py ...`` with the parser of the subcommand the script runs.

    Raises:
        ValueError: not ``python jobs/<known script>.py``, or arguments that parser rejects.
    """
    from aide_ray.cli.main import SUBCOMMANDS

    argv = shlex.split(entrypoint)
    if len(argv) < 2 or argv[0] != "python" or argv[1] not in ENTRYPOINT_SCRIPTS:
        raise ValueError(f"entrypoint must be `python <one of {sorted(ENTRYPOINT_SCRIPTS)}> ...`, "
                         f"got {entrypoint!r}")
    subcommand = ENTRYPOINT_SCRIPTS[argv[1]]
    parser = _StrictParser(prog=argv[1])
    importlib.import_module(f"aide_ray.cli.{SUBCOMMANDS[subcommand][0]}").add_arguments(parser)
    return argv[1], parser.parse_args(argv[2:])


def _entrypoint_config_problems(entrypoint: str) -> list[str]:
    from aide_ray.config import load_config
    from aide_ray.exceptions import ConfigError

    try:
        script, args = entrypoint_args(entrypoint)
    except ValueError as e:
        return [f"entrypoint arguments rejected: {e}"]
    if not args.config:
        return [f"entrypoint must pass --config jobs/configs/<name>.yaml, got {entrypoint!r}"]
    problems = []
    config = REPO / args.config
    if not config.is_file():
        problems.append(f"entrypoint config {args.config} does not exist in the repository")
    else:
        try:
            load_config(config, args.overrides)
        except ConfigError as e:
            problems.append(f"entrypoint config {args.config} does not load: {e}")
    space = getattr(args, "space", None)
    if space and not (REPO / space).is_file():
        problems.append(f"entrypoint search space {space} does not exist in the repository")
    return problems


def manifest_problems(doc: dict[str, Any]) -> list[str]:
    """Every violation of our rules in one manifest document (empty: fine)."""
    problems: list[str] = []
    kind = doc.get("kind")
    for field in ("apiVersion", "kind", "metadata"):
        if field not in doc:
            problems.append(f"{field} is missing")
    if kind not in SCHEMA_FILES and kind not in OTHER_KINDS:
        problems.append(f"kind must be one of {sorted(set(SCHEMA_FILES) | OTHER_KINDS)}, got {kind!r}")

    # Nothing exposes Ray outside the cluster, on any kind of document.
    for path, key, value in _walk(doc):
        if key in ("serviceType", "type") and value in EXPOSING_SERVICE_TYPES:
            problems.append(f"{path}.{key} is {value}: the dashboard/Jobs API must stay ClusterIP "
                            "(use kubectl port-forward)")
        if key == "enableIngress" and value is True:
            problems.append(f"{path}.enableIngress is true: no Ingress for the dashboard/Jobs API")
        # Literal credentials in any container/autoscaler env list.
        if key == "env" and isinstance(value, list):
            for item in value:
                if isinstance(item, dict) and CREDENTIAL_NAME.search(str(item.get("name", ""))) and "value" in item:
                    problems.append(f"{path}.env {item['name']} has a literal value: "
                                    "credentials must come from a Secret (valueFrom.secretKeyRef)")
    if kind not in SCHEMA_FILES:
        return problems

    spec = doc.get("spec") or {}
    if kind == "RayJob":
        entrypoint = spec.get("entrypoint")
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            problems.append("spec.entrypoint is missing")
        else:
            problems += _entrypoint_config_problems(entrypoint)
        if "shutdownAfterJobFinishes" not in spec:
            problems.append("spec.shutdownAfterJobFinishes is missing (set it explicitly)")
        if "ttlSecondsAfterFinished" in spec and spec.get("shutdownAfterJobFinishes") is not True:
            problems.append("spec.ttlSecondsAfterFinished is set but spec.shutdownAfterJobFinishes is not true "
                            "(the operator ignores the TTL then)")
        mode = spec.get("submissionMode", "K8sJobMode")
        if mode not in SUBMISSION_MODES:
            problems.append(f"spec.submissionMode must be one of {sorted(SUBMISSION_MODES)}, got {mode!r}")
        env = _runtime_env(doc)
        working_dir = str(env.get("working_dir", ""))
        if working_dir and "://" not in working_dir and mode != "K8sJobMode":
            problems.append(f"a local working_dir ({working_dir}) is uploaded by the submitter pod: "
                            f"spec.submissionMode must be K8sJobMode, got {mode!r}")
        for name, value in (env.get("env_vars") or {}).items():
            if CREDENTIAL_NAME.search(name):
                problems.append(f"runtimeEnvYAML env_vars {name} has a literal value {value!r}: "
                                "credentials must come from a Secret")
        if "rayClusterSpec" not in spec:
            problems.append("spec.rayClusterSpec is missing")
            return problems

    cs = cluster_spec(doc)
    for field in ("rayVersion", "headGroupSpec", "workerGroupSpecs"):
        if not cs.get(field):
            problems.append(f"{field} is missing")
    if problems:
        return problems

    head = cs["headGroupSpec"]
    groups = [("headGroupSpec", head)] + [(f"workerGroupSpecs[{g.get('groupName')}]", g)
                                          for g in cs["workerGroupSpecs"]]
    for where, group in groups:
        for key, value in (group.get("rayStartParams") or {}).items():
            if not isinstance(value, str):
                problems.append(f"{where}.rayStartParams.{key} must be a string, got {value!r}")
    if (head.get("rayStartParams") or {}).get("num-cpus") != "0":
        problems.append('headGroupSpec.rayStartParams.num-cpus must be "0" (no work on the head)')

    has_gpu_group = False
    for where, pod in pod_templates(doc):
        if (pod.get("securityContext") or {}).get("runAsNonRoot") is not True:
            problems.append(f"{where}: pod securityContext.runAsNonRoot must be true")
        gpu_limits = [c for c in pod.get("containers", []) if GPU in ((c.get("resources") or {}).get("limits") or {})]
        if gpu_limits:
            has_gpu_group = True
            tolerated = any(t.get("key") == GPU and t.get("effect") == "NoSchedule"
                            for t in pod.get("tolerations") or [])
            if not tolerated:
                problems.append(f"{where} requests {GPU} but has no toleration {GPU}:NoSchedule")
        if where == "headGroupSpec" and gpu_limits:
            problems.append(f"headGroupSpec must not request {GPU} (the head runs no training)")
        for container in pod.get("containers", []):
            image = container.get("image", "")
            version = image_ray_version(image)
            if version is None:
                problems.append(f"{where}: cannot tell the Ray version of image {image!r} "
                                "(tag it <version>-ray<X.Y.Z>-...)")
            elif version != cs["rayVersion"]:
                problems.append(f"{where}: image {image} is Ray {version} but rayVersion is {cs['rayVersion']}")
    if not has_gpu_group:
        problems.append(f"no worker group sets a {GPU} limit")
    return problems


# --------------------------------------------------------------------------- schema validation

def _validator(kind: str):
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA_DIR.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {SCHEMA_DIR} (needs the shared kuberay folder)")
    schema = json.loads((SCHEMA_DIR / SCHEMA_FILES[kind]).read_text())
    # The CRD's openAPIV3Schema declares no $schema; OpenAPI 3.0 schema objects are a
    # subset of JSON Schema draft 4/5, so draft 4 is the matching validator.
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft4Validator)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(doc: dict[str, Any]) -> list[str]:
    validator = _validator(doc["kind"])
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def test_cluster_dir_has_the_manifests():
    names = {p.name for p in manifest_files()}
    assert {"ray-job.train-aide.yaml", "ray-job.tune-aide.yaml", "ray-cluster.autoscaler.yaml"} <= names
    for name in names:
        assert re.fullmatch(r"[a-z-]+\.[a-z0-9-]+\.yaml", name), f"{name} must be named <kind>.<variant>.yaml"


@pytest.mark.parametrize("name,doc", RAY_DOCS, ids=[n for n, _ in RAY_DOCS])
def test_manifest_matches_crd_schema(name, doc):
    assert doc["apiVersion"] == "ray.io/v1"
    assert schema_errors(doc) == []


def test_schema_check_catches_a_wrong_type():
    doc = _doc("ray-job.train-aide.yaml#0")
    doc["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "two"
    errors = schema_errors(doc)
    assert any("num-cpus" in e and "is not of type 'string'" in e for e in errors), errors
    assert any("maxReplicas" in e and "is not of type 'integer'" in e for e in errors), errors


def test_schema_check_catches_a_missing_required_field():
    doc = _doc("ray-cluster.autoscaler.yaml#0")
    del doc["spec"]["workerGroupSpecs"][0]["groupName"]
    assert any("'groupName' is a required property" in e for e in schema_errors(doc))


def test_schema_check_catches_a_bad_auth_mode():
    doc = _doc("ray-cluster.autoscaler.yaml#0")
    doc["spec"]["authOptions"]["mode"] = "password"
    assert any("authOptions/mode" in e for e in schema_errors(doc))


# --------------------------------------------------------------------------- our rules on the real files

@pytest.mark.parametrize("name,doc", DOCS, ids=[n for n, _ in DOCS])
def test_manifest_follows_our_rules(name, doc):
    assert manifest_problems(doc) == []


def test_every_ray_manifest_uses_token_auth_from_a_secret():
    for name, doc in RAY_DOCS:
        auth = cluster_spec(doc).get("authOptions") or {}
        assert auth.get("mode") == "token" and auth.get("secretName"), name


def test_entrypoint_scripts_exist():
    scripts = {entrypoint_args(doc["spec"]["entrypoint"])[0] for _, doc in RAY_DOCS if doc["kind"] == "RayJob"}
    assert scripts == set(ENTRYPOINT_SCRIPTS)
    missing = [script for script in scripts if not (REPO / script).is_file()]
    assert missing == [], f"entrypoint scripts missing from the repository: {missing}"


def test_working_dir_is_the_image_workdir():
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", (CLUSTER_DIR / "Dockerfile").read_text(), re.MULTILINE)
    assert workdirs, "cluster/Dockerfile has no WORKDIR"
    for name, doc in RAY_DOCS:
        if doc["kind"] == "RayJob":
            assert _runtime_env(doc)["working_dir"] == workdirs[-1], name


def test_dockerfile_matches_ray_version_and_pin():
    from packaging.requirements import Requirement
    from packaging.version import Version

    text = (CLUSTER_DIR / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.MULTILINE).group(1)
    version = image_ray_version(base)
    assert version is not None, base
    assert {cluster_spec(doc)["rayVersion"] for _, doc in RAY_DOCS} == {version}
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image must run as a non-root user"
    pyproject = (REPO / "pyproject.toml").read_text()
    ray_req = next(Requirement(r) for r in re.findall(r'"(ray\[[^"]+)"', pyproject))
    assert Version(version) in ray_req.specifier, f"pyproject pins {ray_req}, the image has Ray {version}"


def test_rayignore_excludes_data_envs_and_outputs():
    lines = {ln.strip().strip("/") for ln in (REPO / ".rayignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")}
    assert {".git", ".venv", "runs", "outputs", "data_cache"} <= lines
    assert "aide_ray" not in lines and "jobs" not in lines


# --------------------------------------------------------------------------- each rule catches a bad manifest

TRAIN = "ray-job.train-aide.yaml#0"
TUNE = "ray-job.tune-aide.yaml#0"
CLUSTER = "ray-cluster.autoscaler.yaml#0"


def _problems_after(name: str, mutate) -> str:
    doc = _doc(name)
    mutate(doc)
    return "\n".join(manifest_problems(doc))


def _head(doc):
    return cluster_spec(doc)["headGroupSpec"]


def _gpu_group(doc):
    return cluster_spec(doc)["workerGroupSpecs"][0]


def _set(path: list, value):
    def mutate(doc):
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


def _delete(path: list):
    def mutate(doc):
        node = doc
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return mutate


@pytest.mark.parametrize("name,mutate,message", [
    (TRAIN, _delete(["spec", "entrypoint"]), "spec.entrypoint is missing"),
    (TRAIN, _delete(["spec", "shutdownAfterJobFinishes"]), "shutdownAfterJobFinishes is missing"),
    (TRAIN, _set(["spec", "shutdownAfterJobFinishes"], False),
     "ttlSecondsAfterFinished is set but spec.shutdownAfterJobFinishes is not true"),
    (TRAIN, _set(["spec", "submissionMode"], "JobMode"), "submissionMode must be one of"),
    (TRAIN, _set(["spec", "submissionMode"], "HTTPMode"), "spec.submissionMode must be K8sJobMode"),
    (TRAIN, _delete(["spec", "rayClusterSpec", "rayVersion"]), "rayVersion is missing"),
    (TRAIN, _delete(["spec", "rayClusterSpec", "workerGroupSpecs"]), "workerGroupSpecs is missing"),
    (CLUSTER, _delete(["spec", "headGroupSpec"]), "headGroupSpec is missing"),
    (TRAIN, _set(["spec", "rayClusterSpec", "rayVersion"], "2.59.0"),
     "is Ray 2.60.0 but rayVersion is 2.59.0"),
    (CLUSTER, lambda d: _head(d)["template"]["spec"]["containers"][0].update(image="aide-ray:latest"),
     "cannot tell the Ray version of image 'aide-ray:latest'"),
    (TRAIN, lambda d: _gpu_group(d)["rayStartParams"].update({"num-gpus": 1}),
     "workerGroupSpecs[gpu-group].rayStartParams.num-gpus must be a string, got 1"),
    (TRAIN, lambda d: _head(d)["rayStartParams"].update({"num-cpus": "4"}), 'num-cpus must be "0"'),
    (CLUSTER, lambda d: _head(d).update(serviceType="LoadBalancer"),
     "headGroupSpec.serviceType is LoadBalancer"),
    (TRAIN, lambda d: _head(d).update(headService={"spec": {"type": "NodePort"}}),
     "headService.spec.type is NodePort"),
    (CLUSTER, lambda d: _head(d).update(enableIngress=True), "enableIngress is true"),
    (TRAIN, lambda d: _head(d)["template"]["spec"]["containers"][0]["env"].append(
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "hunter2"}),
     "env AWS_SECRET_ACCESS_KEY has a literal value"),
    (CLUSTER, lambda d: d["spec"]["autoscalerOptions"].update(env=[{"name": "RAY_AUTH_TOKEN", "value": "x"}]),
     "autoscalerOptions.env RAY_AUTH_TOKEN has a literal value"),
    (TRAIN, lambda d: d["spec"].update(runtimeEnvYAML="env_vars:\n  WANDB_API_KEY: abc\n"),
     "runtimeEnvYAML env_vars WANDB_API_KEY has a literal value"),
    (TRAIN, lambda d: _gpu_group(d)["template"]["spec"].pop("tolerations"),
     "workerGroupSpecs[gpu-group] requests nvidia.com/gpu but has no toleration"),
    (TRAIN, lambda d: _gpu_group(d)["template"]["spec"]["containers"][0]["resources"]["limits"].pop(GPU),
     "no worker group sets a nvidia.com/gpu limit"),
    (TRAIN, lambda d: _head(d)["template"]["spec"]["containers"][0]["resources"]["limits"].update({GPU: 1}),
     "headGroupSpec must not request nvidia.com/gpu"),
    (TRAIN, lambda d: _gpu_group(d)["template"]["spec"]["securityContext"].pop("runAsNonRoot"),
     "runAsNonRoot must be true"),
    (TRAIN, _set(["spec", "entrypoint"], "python jobs/train_aide.py --config jobs/configs/nope.yaml"),
     "entrypoint config jobs/configs/nope.yaml does not exist"),
    (TRAIN, _set(["spec", "entrypoint"], "python jobs/train_aide.py --config jobs/configs/kuberay_gpu.yaml "
                 "epoch=3"), "unknown config key 'epoch'"),
    (TRAIN, _set(["spec", "entrypoint"], "python jobs/train_aide.py --config jobs/configs/kuberay_gpu.yaml "
                 "workers=0"), "does not load: workers must be in"),
    (TRAIN, _set(["spec", "entrypoint"], "python jobs/train_aide.py"), "entrypoint must pass --config"),
    (TRAIN, _set(["spec", "entrypoint"], "python train.py --config jobs/configs/kuberay_gpu.yaml"),
     "entrypoint must be `python <one of"),
    (TUNE, _set(["spec", "entrypoint"], "python jobs/tune_aide.py --config jobs/configs/kuberay_tune.yaml "
                "--max-concurent 4"), "unrecognized arguments: --max-concurent"),
    (TUNE, _set(["spec", "entrypoint"], "python jobs/tune_aide.py --config jobs/configs/kuberay_tune.yaml "
                "--space jobs/configs/nope.yaml"), "entrypoint search space jobs/configs/nope.yaml does not exist"),
    (TRAIN, _set(["kind"], "RayService"), "kind must be one of"),
])
def test_rule_catches_bad_manifest(name, mutate, message):
    problems = _problems_after(name, mutate)
    assert message in problems, f"expected {message!r} among:\n{problems}"


def test_drifted_config_key_is_caught(tmp_path, monkeypatch):
    """A config file whose key the code no longer knows fails the manifest check, naming the file."""
    bad = tmp_path / "jobs" / "configs" / "drift.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text("epochs: 3\ndata:\n  shard: /mnt/x\n")  # misspelt data.shards
    monkeypatch.setitem(globals(), "REPO", tmp_path)  # entrypoint paths resolve against REPO
    problems = _problems_after(TRAIN, _set(["spec", "entrypoint"],
                                           "python jobs/train_aide.py --config jobs/configs/drift.yaml"))
    assert "unknown config key 'data.shard'" in problems and "did you mean 'data.shards'" in problems


def test_image_ray_version():
    assert image_ray_version("rayproject/ray:2.60.0-py311-gpu") == "2.60.0"
    assert image_ray_version("registry.example.com/aide-ray:0.1.0-ray2.60.0-py311-gpu") == "2.60.0"
    assert image_ray_version("registry.example.com:5000/aide-ray:latest") is None
