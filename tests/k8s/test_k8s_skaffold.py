"""skaffold.yaml: valid against the v4beta13 schema, an artifact per service, profiles that render."""

from __future__ import annotations

import copy

import jsonschema
import pytest
from k8s_support import (
    CHART,
    ROOT,
    SERVICES,
    apply_patches,
    by_component,
    manifests,
    of_kind,
    skaffold_config,
    skaffold_schema,
)


def test_skaffold_config_validates_against_the_schema():
    config = skaffold_config()
    assert config["apiVersion"] == "skaffold/v4beta13"
    validator = jsonschema.Draft7Validator(skaffold_schema())
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(config)]
    assert not errors, errors
    for profile in config["profiles"]:
        assert validator.is_valid(apply_patches(config, profile["patches"])), profile["name"]


def test_schema_check_catches_mistakes():
    validator = jsonschema.Draft7Validator(skaffold_schema())
    for mutate in (
        lambda c: c["build"]["artifacts"][0]["docker"].update(targett="fetcher"),
        lambda c: c["deploy"]["helm"]["releases"][0].update(chart="charts/taxonstream"),
        lambda c: c.pop("kind"),
    ):
        broken = copy.deepcopy(skaffold_config())
        mutate(broken)
        assert not validator.is_valid(broken)


def test_one_artifact_per_service_and_the_chart_as_deploy():
    config = skaffold_config()
    assert [a["image"] for a in config["build"]["artifacts"]] == [f"taxonstream-{s}" for s in SERVICES]
    (release,) = config["deploy"]["helm"]["releases"]
    assert (ROOT / release["chartPath"]).resolve() == CHART


@pytest.mark.parametrize("profile", ["local", "gpu"])
def test_profile_values_files_render(profile):
    config = skaffold_config()
    (spec,) = [p for p in config["profiles"] if p["name"] == profile]
    (release,) = apply_patches(config, spec["patches"])["deploy"]["helm"]["releases"]
    files = [ROOT / f for f in release["valuesFiles"]]
    assert all(f.exists() for f in files), files
    objects = manifests.render(manifests.load_values(*files))
    triton = by_component(objects, "Deployment")["triton"]["spec"]["template"]["spec"]
    limits = triton["containers"][0]["resources"]["limits"]
    if profile == "gpu":
        assert limits["nvidia.com/gpu"] == 1 and triton["nodeSelector"]
        assert of_kind(objects, "ScaledObject"), "GPU clusters keep lag-based autoscaling"
    else:
        # CPU Triton on a laptop-sized cluster, nothing that needs KEDA or metrics-server.
        assert "nvidia.com/gpu" not in limits and "nodeSelector" not in triton
        assert not of_kind(objects, "ScaledObject") and not of_kind(objects, "HorizontalPodAutoscaler")
        assert apply_patches(config, spec["patches"])["build"]["local"]["push"] is False
