"""The explorer (portal) in the chart: off by default; when on, strict objects, HTTP probes, a closed policy."""

from __future__ import annotations

import re

import helm_python as helm
import kubernetes_validate
import pytest
from k8s_support import ROOT, SERVICES, component, env_of, image_requirements, render, render_values

ON = {
    "portal": {
        "enabled": True,
        "tokenSecret": {"name": "portal-token"},
        "ingress": {"enabled": True, "host": "explorer.example.org", "tlsSecret": "explorer-tls", "className": "nginx"},
    }
}


def _portal(objects: list[dict]) -> dict[str, dict]:
    return {o["kind"]: o for o in objects if component(o) == "portal"}


def test_off_by_default():
    assert _portal(render("default")) == {}


@pytest.mark.parametrize("version", ("1.27.0", kubernetes_validate.latest_version()))
def test_objects_validate_strictly(version):
    objects = _portal(render_values(ON))
    assert set(objects) == {"Deployment", "Service", "NetworkPolicy", "Ingress"}
    for obj in objects.values():
        kubernetes_validate.validate(obj, version, strict=True)


def test_pod_is_non_root_probed_over_http_and_calls_every_service():
    deployment = _portal(render_values(ON))["Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["command"] == ["python", "-m", "taxonstream.portal"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    env = env_of(container)
    assert env["TAXONSTREAM_PORTAL_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "portal-token", "key": "token"}
    assert env["TAXONSTREAM_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "taxonstream-token"
    for service in SERVICES:
        assert env[f"TAXONSTREAM_{service.upper()}_ADDR"]["value"] == f"taxonstream-{service}:50051"
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_policy_lets_the_portal_reach_only_dns_and_the_services():
    policy = _portal(render_values(ON))["NetworkPolicy"]["spec"]
    peers = [rule["to"][0]["podSelector"]["matchLabels"] for rule in policy["egress"][1:]]
    called = [labels["app.kubernetes.io/component"] for labels in peers]
    assert sorted(called) == sorted(SERVICES)
    assert all(rule["ports"] == [{"port": 50051, "protocol": "TCP"}] for rule in policy["egress"][1:])
    assert {p["port"] for p in policy["egress"][0]["ports"]} == {53}
    assert policy["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_ingress_routes_the_host_to_the_service():
    objects = _portal(render_values(ON))
    rule = objects["Ingress"]["spec"]["rules"][0]
    assert rule["host"] == "explorer.example.org"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": objects["Service"]["metadata"]["name"], "port": {"name": "http"}}
    assert objects["Ingress"]["spec"]["tls"] == [{"hosts": ["explorer.example.org"], "secretName": "explorer-tls"}]


def test_no_token_and_no_host_are_refused():
    with pytest.raises(helm.HelmRenderError, match="portal.tokenSecret.name is required"):
        render_values({"portal": {"enabled": True}})
    allowed = render_values({"portal": {"enabled": True, "allowWithoutToken": True}})
    env = env_of(_portal(allowed)["Deployment"]["spec"]["template"]["spec"]["containers"][0])
    assert env["TAXONSTREAM_PORTAL_ALLOW_WITHOUT_TOKEN"]["value"] == "true" and "TAXONSTREAM_PORTAL_TOKEN" not in env
    with pytest.raises(helm.HelmRenderError, match="portal.ingress.host is required"):
        render_values({"portal": {**ON["portal"], "ingress": {"enabled": True}}})


def test_the_image_has_a_portal_target_with_its_web_stack():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM runtime-portal AS portal$", dockerfile, re.MULTILINE)
    assert "image_requirements.py portal " in dockerfile
    names = {image_requirements.requirement_name(r) for r in image_requirements.requirements("portal")}
    assert {"fastapi", "uvicorn", "jinja2", "python-multipart"} <= names
    assert "tritonclient" not in names and "playwright" not in names
