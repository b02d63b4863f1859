"""Shared helpers for the offline Kubernetes checks: chart renders, schemas, skaffold config.

Everything here is offline: the chart is rendered by the Helm SDK in-process, and the schemas that
no registry ships (KEDA's CRD, skaffold's config schema) are read from ../shared/schemas/.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT.parent / "shared" / "schemas"
CHART = ROOT / "charts" / "taxonstream"
SERVICES = ("fetcher", "checksummer", "detector", "embedder", "indexer")
# Consumer-group services, scaled on Kafka lag; the indexer reads every partition itself.
CONSUMERS = {"fetcher": "records", "checksummer": "fetched", "detector": "verified", "embedder": "cropped"}
CRD_KINDS = {"ScaledObject", "ServiceMonitor"}
# An existing Kafka, S3 and Triton instead of the bundled ones.
EXTERNAL = {
    "kafka": {"bootstrapServers": "kafka-0.kafka.data:9093,kafka-1.kafka.data:9093", "bundled": {"enabled": False}},
    "s3": {"endpoint": "s3.example.org", "secure": True, "bundled": {"enabled": False}},
    "triton": {"enabled": False, "url": "triton.models:8001"},
}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The generator of k8s/ renders the chart for the tests too: one code path for both.
manifests = _load("taxonstream_k8s_manifests", ROOT / "tools" / "k8s" / "manifests.py")
image_requirements = _load("taxonstream_k8s_image_requirements", ROOT / "tools" / "k8s" / "image_requirements.py")

# name -> user values, as `helm -f ...` would pass them.
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu": manifests.load_values(CHART / "values-gpu.yaml"),
    "keda-off": {"keda": {"enabled": False}},
    "local": manifests.load_values(CHART / "values-local.yaml"),
    "external": manifests.load_values(
        CHART / "values-gpu.yaml", overrides={**EXTERNAL, "metrics": {"serviceMonitor": {"enabled": True}}}
    ),
}


@cache
def _render(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(manifests.render(SCENARIOS[name]))


def render(name: str) -> list[dict[str, Any]]:
    """A scenario's objects (a private copy, so a test may modify them)."""
    return copy.deepcopy(list(_render(name)))


def render_values(values: dict[str, Any]) -> list[dict[str, Any]]:
    return manifests.render(values)


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def component(obj: dict[str, Any]) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def by_component(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {component(o): o for o in objects if o["kind"] == kind}


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(object, pod spec) for every workload and bare pod."""
    for obj in objects:
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            yield obj, obj["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            yield obj, obj["spec"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def schema_file(name: str) -> Path:
    path = SCHEMAS / name
    assert path.exists(), f"{path} is missing: CI clones the shared/ folder beside the repository"
    return path


def _strict(schema: Any) -> Any:
    """A CRD's structural schema as the API server applies it with strict field validation:
    unknown fields are errors unless the schema preserves them."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def keda_scaledobject_schema() -> dict[str, Any]:
    crd = yaml.safe_load(schema_file("keda.sh_scaledobjects.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return _strict(version["schema"]["openAPIV3Schema"])


@cache
def skaffold_schema() -> dict[str, Any]:
    return json.loads(schema_file("skaffold-v4beta13.json").read_text())


@cache
def skaffold_config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "skaffold.yaml").read_text())


def skaffold_images() -> set[str]:
    return {a["image"] for a in skaffold_config()["build"]["artifacts"]}


def apply_patches(doc: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON Patch subset skaffold profiles use here (add, replace, remove)."""
    doc = copy.deepcopy(doc)
    for patch in patches:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in patch["path"].split("/")[1:]]
        target = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        key = int(last) if isinstance(target, list) and last != "-" else last
        if patch["op"] == "remove":
            del target[key]
        elif patch["op"] == "add" and isinstance(target, list):
            target.insert(len(target) if key == "-" else key, patch["value"])
        elif patch["op"] in {"add", "replace"}:
            if patch["op"] == "replace":
                assert key in (range(len(target)) if isinstance(target, list) else target), patch["path"]
            target[key] = patch["value"]
        else:
            raise AssertionError(f"unsupported patch op {patch['op']}")
    return doc


def address_resolves(objects: list[dict], address: str) -> str:
    """The component behind a host:port pointing at a rendered Service, checking the port exists."""
    host, port = address.rsplit(":", 1)
    service = of_kind(objects, "Service")[host]
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}, address
    return component(service)
