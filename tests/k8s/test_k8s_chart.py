"""The Helm chart, checked offline: lint, schema validation, and what each object promises."""

from __future__ import annotations

import copy
import json

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
from k8s_support import (
    CHART,
    CONSUMERS,
    CRD_KINDS,
    EXTERNAL,
    SCENARIOS,
    SERVICES,
    address_resolves,
    by_component,
    component,
    env_of,
    keda_scaledobject_schema,
    of_kind,
    pod_specs,
    render,
    render_values,
)

# The chart's kubeVersion floor (native gRPC probes) and the newest schemas kubernetes-validate has.
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
PARTITIONS = 4


# --- lint and schemas ---------------------------------------------------------------------------


def test_lint_strict(scenario):
    report = helm.lint(CHART, SCENARIOS[scenario], strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 1 is informational
    assert not report["errors"] and not problems, problems


def test_lint_rejects_a_mistyped_value():
    # values.schema.json closes every block, so a typo fails instead of being ignored.
    report = helm.lint(CHART, {"fetcher": {"replicaCount": 3}}, strict=True)
    assert any("replicaCount" in e for e in report["errors"])
    with pytest.raises(helm.HelmValuesError):
        render_values({"kafka": {"topicPartitions": "four"}})


def _distinct_builtins() -> list[dict]:
    seen, objects = set(), []
    for name in sorted(SCENARIOS):
        for obj in render(name):
            key = json.dumps(obj, sort_keys=True)
            if obj["kind"] not in CRD_KINDS and key not in seen:
                seen.add(key)
                objects.append(obj)
    return objects


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_builtin_objects_validate_strictly(version):
    objects = _distinct_builtins()
    assert {o["kind"] for o in objects} >= {
        "Deployment",
        "Service",
        "ServiceAccount",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
        "StatefulSet",
        "ConfigMap",
        "Pod",
    }
    failures = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {error.message}")
    assert not failures, "\n".join(failures)


def test_strict_validation_catches_an_unknown_field():
    deployment = next(iter(of_kind(render("default"), "Deployment").values()))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 50051}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def test_scaled_objects_validate_against_the_keda_crd(scenario):
    validator = jsonschema.Draft7Validator(keda_scaledobject_schema())
    for obj in of_kind(render(scenario), "ScaledObject").values():
        errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(obj)]
        assert not errors, errors


def test_keda_crd_check_catches_mistakes():
    validator = jsonschema.Draft7Validator(keda_scaledobject_schema())
    scaled = of_kind(render("default"), "ScaledObject")["taxonstream-fetcher"]
    assert validator.is_valid(scaled)
    for mutate in (
        lambda o: o["spec"]["triggers"][0]["metadata"].update(lagThreshold=100),  # must be a string
        lambda o: o["spec"].update(maxReplicas=4),  # not a ScaledObject field
        lambda o: o["spec"].pop("scaleTargetRef"),
    ):
        broken = copy.deepcopy(scaled)
        mutate(broken)
        assert not validator.is_valid(broken)


# --- autoscaling ----------------------------------------------------------------------------------


def test_each_consumer_scales_on_its_own_topic_lag():
    objects = render("default")
    scaled = by_component(objects, "ScaledObject")
    assert set(scaled) == set(CONSUMERS)
    deployments = of_kind(objects, "Deployment")
    for name, topic in CONSUMERS.items():
        spec = scaled[name]["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert component(deployments[spec["scaleTargetRef"]["name"]]) == name
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= PARTITIONS
        trigger, *also = spec["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["topic"] == f"taxonstream.{topic}"
        assert meta["consumerGroup"] == f"taxonstream.{name}"
        # The embedder's second worker (reembed backfills) is its own group on its own topic.
        assert [(t["metadata"]["consumerGroup"], t["metadata"]["topic"]) for t in also] == (
            [("taxonstream.reembed", "taxonstream.reembed")] if name == "embedder" else []
        )
        # Fully qualified: KEDA's operator resolves it from its own namespace.
        assert meta["bootstrapServers"] == "taxonstream-kafka.taxonstream.svc:9092"
        assert meta["allowIdleConsumers"] == "false"
        assert int(meta["lagThreshold"]) > 0
    # The indexer reads every partition in every replica: CPU-scaled, never on lag.
    hpas = by_component(objects, "HorizontalPodAutoscaler")
    assert set(hpas) == {"indexer"}
    assert hpas["indexer"]["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_without_keda_every_autoscaled_service_gets_a_cpu_hpa():
    objects = render("keda-off")
    assert not of_kind(objects, "ScaledObject")
    hpas = by_component(objects, "HorizontalPodAutoscaler")
    assert set(hpas) == set(SERVICES)
    for name in CONSUMERS:
        assert hpas[name]["spec"]["maxReplicas"] <= PARTITIONS
        assert hpas[name]["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_autoscaled_deployments_leave_replicas_to_the_autoscaler():
    for name in ("default", "keda-off", "local"):
        objects = render(name)
        targets = {
            o["spec"]["scaleTargetRef"]["name"]
            for o in objects
            if o["kind"] in {"ScaledObject", "HorizontalPodAutoscaler"}
        }
        for deployment_name, deployment in of_kind(objects, "Deployment").items():
            # Otherwise every helm upgrade would reset the replica count the autoscaler chose.
            assert ("replicas" in deployment["spec"]) == (deployment_name not in targets), (name, deployment_name)


@pytest.mark.parametrize(
    "values",
    [
        {"fetcher": {"autoscaling": {"maxReplicas": 5}}},
        {"keda": {"enabled": False}, "detector": {"autoscaling": {"maxReplicas": 8}}},
        {"embedder": {"autoscaling": {"enabled": False}, "replicas": 5}},
        {"kafka": {"topicPartitions": 2}},
    ],
)
def test_more_consumers_than_partitions_is_refused(values):
    with pytest.raises(helm.HelmRenderError, match="topicPartitions"):
        render_values(values)


def test_indexer_is_not_bound_by_partitions():
    objects = render_values(
        {
            "kafka": {"topicPartitions": 1},
            **{name: {"autoscaling": {"minReplicas": 1, "maxReplicas": 1}} for name in CONSUMERS},
            "indexer": {"autoscaling": {"maxReplicas": 6}},
        }
    )
    assert by_component(objects, "HorizontalPodAutoscaler")["indexer"]["spec"]["maxReplicas"] == 6


# --- pods ---------------------------------------------------------------------------------------


def test_every_pod_is_non_root_with_resources_and_probes(scenario):
    objects = render(scenario)
    checked = 0
    for obj, spec in pod_specs(objects):
        pod_sc = spec["securityContext"]
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0, where
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where
            if obj["kind"] != "Pod":  # the helm test pod runs once and exits
                assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container), where
            checked += 1
    assert checked >= 6


def test_services_use_native_grpc_probes_and_contract_ports():
    for name, deployment in by_component(render("default"), "Deployment").items():
        if name == "triton":
            continue
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": 50051, "metrics": 9090}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": 50051}, (name, probe)
        env = env_of(container)
        assert env["TAXONSTREAM_BIND_HOST"]["value"] == "0.0.0.0"
        assert env["TAXONSTREAM_GRPC_PORT"]["value"] == "50051"
        assert env["TAXONSTREAM_METRICS_PORT"]["value"] == "9090"
        assert container["command"] == ["python", "-m", f"taxonstream.{name}"]
        # SIGTERM drain (~20 s in the services) fits inside the grace period.
        assert spec["terminationGracePeriodSeconds"] >= 25
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_services_expose_named_grpc_and_metrics_ports():
    objects = render("default")
    workloads = {**by_component(objects, "Deployment"), **by_component(objects, "StatefulSet")}
    for name, service in by_component(objects, "Service").items():
        if name in SERVICES:
            assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 50051, "metrics": 9090}
        containers = workloads[name]["spec"]["template"]["spec"]["containers"]
        container_ports = {p["name"] for c in containers for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports, name


def test_selectors_each_match_exactly_one_workload(scenario):
    objects = render(scenario)
    pod_labels = {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in objects
        if o["kind"] in {"Deployment", "StatefulSet"}
    }

    def matches(selector: dict) -> list[str]:
        return [n for n, labels in pod_labels.items() if selector.items() <= labels.items()]

    for obj in objects:
        selector = {
            "Service": lambda o: o["spec"]["selector"],
            "PodDisruptionBudget": lambda o: o["spec"]["selector"]["matchLabels"],
            "NetworkPolicy": lambda o: o["spec"]["podSelector"]["matchLabels"],
            "Deployment": lambda o: o["spec"]["selector"]["matchLabels"],
        }.get(obj["kind"])
        if selector:
            assert matches(selector(obj)) == [obj["metadata"]["name"]], obj["metadata"]["name"]


def test_every_component_has_an_account_and_a_disruption_budget():
    objects = render("default")
    components = set(SERVICES) | {"triton"}
    accounts = by_component(objects, "ServiceAccount")
    assert set(accounts) == components
    assert all(a["automountServiceAccountToken"] is False for a in accounts.values())
    budgets = by_component(objects, "PodDisruptionBudget")
    assert set(budgets) == components
    # maxUnavailable, so a single replica never blocks a node drain.
    assert all(b["spec"]["maxUnavailable"] == 1 and "minAvailable" not in b["spec"] for b in budgets.values())
    for name, deployment in by_component(objects, "Deployment").items():
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == accounts[name]["metadata"]["name"]


# --- wiring and credentials -----------------------------------------------------------------------


@pytest.mark.parametrize("scenario_name", ["default", "gpu", "local"])
def test_service_environment_points_at_rendered_services(scenario_name):
    objects = render(scenario_name)
    for name, deployment in by_component(objects, "Deployment").items():
        if name == "triton":
            continue
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        assert address_resolves(objects, env["TAXONSTREAM_KAFKA_BOOTSTRAP"]["value"]) == "kafka"
        assert address_resolves(objects, env["TAXONSTREAM_S3_ENDPOINT"]["value"]) == "minio"
        assert env["TAXONSTREAM_TOPIC_PARTITIONS"]["value"] == str(PARTITIONS)
        calls = {k for k in env if k.endswith("_ADDR") or k == "TAXONSTREAM_TRITON_URL"}
        expected = {
            "detector": {"TAXONSTREAM_TRITON_URL"},
            "embedder": {"TAXONSTREAM_TRITON_URL"},
            "indexer": {"TAXONSTREAM_EMBEDDER_ADDR", "TAXONSTREAM_DETECTOR_ADDR"},
        }.get(name, set())
        assert calls == expected, name
        for key in calls:
            target = address_resolves(objects, env[key]["value"])
            assert target == ("triton" if key == "TAXONSTREAM_TRITON_URL" else key.split("_")[1].lower())


def test_external_endpoints_replace_the_bundled_ones():
    objects = render("external")
    assert not of_kind(objects, "StatefulSet")
    assert "triton" not in by_component(objects, "Deployment")
    for name, deployment in by_component(objects, "Deployment").items():
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        assert env["TAXONSTREAM_KAFKA_BOOTSTRAP"]["value"] == EXTERNAL["kafka"]["bootstrapServers"]
        assert env["TAXONSTREAM_S3_ENDPOINT"]["value"] == "s3.example.org"
        assert env["TAXONSTREAM_S3_SECURE"]["value"] == "true"
        if name in {"detector", "embedder"}:
            assert env["TAXONSTREAM_TRITON_URL"]["value"] == "triton.models:8001"
    for scaled in of_kind(objects, "ScaledObject").values():
        assert scaled["spec"]["triggers"][0]["metadata"]["bootstrapServers"] == EXTERNAL["kafka"]["bootstrapServers"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka": {"bundled": {"enabled": False}}}, "kafka.bootstrapServers is required"),
        ({"s3": {"bundled": {"enabled": False}}}, "s3.endpoint is required"),
        ({"triton": {"enabled": False}}, "triton.url is required"),
        ({"kafka": {"bootstrapServers": "kafka:9092"}}, "kafka.bundled.enabled=false"),
        ({"s3": {"credentials": {"create": True}}}, "s3.credentials.accessKey is required"),
    ],
)
def test_incomplete_settings_fail_with_a_message(values, message):
    with pytest.raises(helm.HelmRenderError, match=message):
        render_values(values)


def test_credentials_come_only_from_secrets(scenario):
    objects = render(scenario)
    assert not of_kind(objects, "Secret"), "no Secret unless s3.credentials.create"
    secret_like = ("ACCESS_KEY", "SECRET", "PASSWORD", "ROOT_USER")
    seen = 0
    for _, spec in pod_specs(objects):
        for container in spec["containers"]:
            for name, var in env_of(container).items():
                if any(word in name for word in secret_like):
                    assert "value" not in var and var["valueFrom"]["secretKeyRef"]["name"] == "taxonstream-s3", name
                    seen += 1
    assert seen >= 2


def test_optional_secret_from_values():
    objects = render_values({"s3": {"credentials": {"create": True, "accessKey": "a", "secretKey": "b"}}})
    (secret,) = of_kind(objects, "Secret").values()
    assert secret["metadata"]["name"] == "taxonstream-s3"
    assert secret["stringData"] == {"access-key": "a", "secret-key": "b"}


# --- network policies -----------------------------------------------------------------------------
