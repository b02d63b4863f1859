"""Who may call, in the chart: the token from its Secret in every service, TLS files and probes under TLS."""

from __future__ import annotations

import helm_python as helm
import pytest
from k8s_support import SERVICES, by_component, env_of, render, render_values


def _containers(objects: list) -> dict[str, dict]:
    deployments = by_component(objects, "Deployment")
    return {name: deployments[name]["spec"]["template"]["spec"]["containers"][0] for name in SERVICES}


def test_every_service_reads_the_token_from_its_secret_only():
    for name, container in _containers(render("default")).items():
        var = env_of(container)["TAXONSTREAM_TOKEN"]
        assert "value" not in var, name
        assert var["valueFrom"]["secretKeyRef"] == {"name": "taxonstream-token", "key": "token"}, name
        assert "TAXONSTREAM_INSECURE" not in env_of(container), name


def test_no_token_secret_without_an_explicit_insecure_run_is_refused():
    with pytest.raises(helm.HelmRenderError, match="auth.tokenSecret.name is required"):
        render_values({"auth": {"tokenSecret": {"name": ""}}})
    objects = render_values({"auth": {"tokenSecret": {"name": ""}, "allowInsecure": True}})
    for name, container in _containers(objects).items():
        env = env_of(container)
        assert "TAXONSTREAM_TOKEN" not in env and env["TAXONSTREAM_INSECURE"]["value"] == "true", name


def test_tls_mounts_the_secret_and_probes_the_plaintext_health_port():
    objects = render_values({"tls": {"enabled": True}, "auth": {"requireForReads": True}})
    deployments = by_component(objects, "Deployment")
    for name in SERVICES:
        pod = deployments[name]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = env_of(container)
        assert env["TAXONSTREAM_TLS_CERT"]["value"] == "/etc/taxonstream/tls/tls.crt", name
        assert env["TAXONSTREAM_TLS_CA"]["value"] == "/etc/taxonstream/tls/ca.crt", name
        assert env["TAXONSTREAM_HEALTH_PORT"]["value"] == "50052", name
        assert env["TAXONSTREAM_AUTH_READS"]["value"] == "true", name
        assert {"name": "tls", "secret": {"secretName": "taxonstream-tls"}} in pod["volumes"], name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == 50052, (name, probe)
    policies = by_component(objects, "NetworkPolicy")
    for name in SERVICES:
        ports = {p["port"] for p in policies[name]["spec"]["ingress"][0]["ports"]}
        assert ports == {"grpc", "health"}, name
