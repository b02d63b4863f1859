"""The Helm chart, checked offline: network policies, Triton, monitoring and the helm test pod."""

from __future__ import annotations

import ipaddress

import kubernetes_validate
from k8s_support import (
    SERVICES,
    address_resolves,
    by_component,
    component,
    env_of,
    manifests,
    of_kind,
    render,
    render_values,
)

# The chart's kubeVersion floor (native gRPC probes) and the newest schemas kubernetes-validate has.
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
PARTITIONS = 4


def _egress(policy: dict) -> tuple[set[tuple[str, int]], list[dict]]:
    """(component, port) pairs reached through pod selectors, and the ipBlock/open rules."""
    pods, other = set(), []
    for rule in policy["spec"]["egress"]:
        ports = {p["port"] for p in rule["ports"]}
        selectors = [peer["podSelector"] for peer in rule.get("to", []) if "podSelector" in peer]
        if ports == {53}:
            continue
        if selectors and all("namespaceSelector" not in peer for peer in rule["to"]):
            pods |= {(s["matchLabels"]["app.kubernetes.io/component"], p) for s in selectors for p in ports}
        else:
            other.append(rule)
    return pods, other


def test_network_policies_allow_only_what_each_service_talks_to():
    policies = by_component(render("default"), "NetworkPolicy")
    assert set(policies) == set(SERVICES) | {"triton"}
    data = {("kafka", 9092), ("minio", 9000)}
    expected = {
        "fetcher": data,
        "checksummer": data,
        "detector": data | {("triton", 8001)},
        "embedder": data | {("triton", 8001)},
        "indexer": data | {("embedder", 50051), ("detector", 50051)},
        "triton": {("minio", 9000)},
    }
    for name, policy in policies.items():
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        pods, other = _egress(policy)
        assert pods == expected[name], name
        assert bool(other) == (name == "fetcher"), name
        dns = [r for r in policy["spec"]["egress"] if {p["port"] for p in r["ports"]} == {53}]
        assert dns and all(r.get("to") for r in dns), "DNS only to the cluster DNS pods"


def test_fetcher_reaches_the_public_internet_only():
    policy = by_component(render("default"), "NetworkPolicy")["fetcher"]
    _, (internet,) = _egress(policy)
    assert {p["port"] for p in internet["ports"]} == {80, 443}
    blocks = {b["ipBlock"]["cidr"]: b["ipBlock"].get("except", []) for b in internet["to"]}
    assert set(blocks) == {"0.0.0.0/0", "::/0"}
    excepted = [ipaddress.ip_network(c) for c in blocks["0.0.0.0/0"] + blocks["::/0"]]
    for address in ("169.254.169.254", "10.1.2.3", "172.20.0.1", "192.168.1.1", "127.0.0.1", "fd00::1", "::1"):
        ip = ipaddress.ip_address(address)
        assert any(ip in net for net in excepted if net.version == ip.version), address
    for address in ("8.8.8.8", "2001:4860:4860::8888"):
        ip = ipaddress.ip_address(address)
        assert not any(ip in net for net in excepted if net.version == ip.version), address


def test_fetcher_allow_networks_open_both_policy_and_service():
    objects = render_values({"fetcher": {"allowNetworks": ["10.20.0.0/16"], "egressPorts": [80, 443, 8080]}})
    _, (internet,) = _egress(by_component(objects, "NetworkPolicy")["fetcher"])
    assert {"ipBlock": {"cidr": "10.20.0.0/16"}} in internet["to"]
    assert {p["port"] for p in internet["ports"]} == {80, 443, 8080}
    env = env_of(by_component(objects, "Deployment")["fetcher"]["spec"]["template"]["spec"]["containers"][0])
    assert env["TAXONSTREAM_FETCH_ALLOW_NETWORKS"]["value"] == "10.20.0.0/16"


def test_ingress_grpc_from_the_release_and_clients_metrics_from_monitoring():
    for name, policy in by_component(render("default"), "NetworkPolicy").items():
        rules = {tuple(p["port"] for p in r["ports"]): r["from"] for r in policy["spec"]["ingress"]}
        assert rules[("metrics",)] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]
        if name == "triton":
            callers = {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rules[("grpc", "http")]}
            assert callers == {"detector", "embedder", "test"}
        else:
            assert rules[("grpc",)] == [
                {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "taxonstream"}}},
                {"podSelector": {"matchLabels": {"taxonstream.io/client": "true"}}},
            ]


def test_external_endpoints_open_their_ports():
    policies = by_component(render("external"), "NetworkPolicy")
    assert "triton" not in policies
    _, other = _egress(policies["detector"])
    assert sorted(tuple(sorted(p["port"] for p in r["ports"])) for r in other) == [(443,), (8001,), (9093,)]


# --- Triton ---------------------------------------------------------------------------------------


def _triton(objects: list[dict]) -> dict:
    return by_component(objects, "Deployment")["triton"]["spec"]["template"]


def test_triton_loads_models_from_s3_and_is_probed_on_ready():
    template = _triton(render("default"))
    (container,) = template["spec"]["containers"]
    assert "--model-repository=s3://taxonstream-minio:9000/taxonstream/models" in container["args"]
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    env = env_of(container)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "taxonstream-s3"
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "8002"
    assert "nvidia.com/gpu" not in container["resources"]["limits"], "the default Triton runs on CPU"
    assert "nodeSelector" not in template["spec"]


def test_triton_on_gpu_nodes():
    template = _triton(render("gpu"))
    (container,) = template["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert template["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in template["spec"]["tolerations"]


def test_triton_uses_https_for_a_secure_s3():
    objects = render_values({"s3": {"endpoint": "s3.example.org:9443", "secure": True, "bundled": {"enabled": False}}})
    (container,) = _triton(objects)["spec"]["containers"]
    assert "--model-repository=s3://https://s3.example.org:9443/taxonstream/models" in container["args"]


def test_service_monitor_scrapes_every_metrics_port():
    assert not of_kind(render("default"), "ServiceMonitor")
    objects = render("external")
    (monitor,) = of_kind(objects, "ServiceMonitor").values()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    selected = [
        s
        for s in of_kind(objects, "Service").values()
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert sorted(component(s) for s in selected) == sorted(SERVICES)
    assert all("metrics" in {p["name"] for p in s["spec"]["ports"]} for s in selected)
    with_triton = render_values({"metrics": {"serviceMonitor": {"enabled": True}}})
    labels = of_kind(with_triton, "Service")["taxonstream-triton"]["metadata"]["labels"]
    assert labels["taxonstream.io/scrape"] == "true"


def test_helm_test_pod_checks_every_service():
    objects = manifests.render({}, hooks=True)
    (pod,) = of_kind(objects, "Pod").values()
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    targets = pod["spec"]["containers"][0]["command"][3].split(",")
    assert sorted(address_resolves(objects, t) for t in targets) == sorted(SERVICES)
