"""The README's "Deploy to Kubernetes" section: every values key is explained, every command is real."""

from __future__ import annotations

import re

import yaml
from k8s_support import CHART, ROOT, SERVICES

# Blocks the user fills with Kubernetes objects or free-form maps: documented as a whole.
OPAQUE = {
    "resources", "nodeSelector", "tolerations", "affinity", "podSecurityContext", "securityContext",
    "commonLabels", "podAnnotations", "podLabels", "annotations", "labels", "extraEnv", "extraArgs",
    "egressTo", "grpcFrom", "metricsFrom", "dnsTo", "imagePullSecrets",
}  # fmt: skip


def _keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in OPAQUE:
            keys += _keys(value, path + ".")
        else:
            keys.append(path)
    return keys


def documented_keys() -> set[str]:
    """Values keys the docs must explain; keys several service blocks share are written `<service>.…`."""
    keys = _keys(yaml.safe_load((CHART / "values.yaml").read_text()))
    service_keys = [k.split(".", 1)[1] for k in keys if k.split(".")[0] in SERVICES]
    shared = {k for k in service_keys if service_keys.count(k) > 1}
    names = set()
    for key in keys:
        head, _, rest = key.partition(".")
        names.add(f"<service>.{rest}" if head in SERVICES and rest in shared else key)
    return names


def deploy_section() -> str:
    return (ROOT / "README.md").read_text().split("\n## Deploy to Kubernetes\n", 1)[1]


def test_every_values_key_is_documented():
    text = deploy_section().split("\n### Values\n", 1)[1]
    in_tables = set(re.findall(r"^\| `([^`]+)` \|", text, re.MULTILINE))
    expected = documented_keys()
    assert len(expected) > 80
    assert not expected - in_tables, f"undocumented values keys: {sorted(expected - in_tables)}"
    assert not in_tables - expected, f"documented keys the chart does not have: {sorted(in_tables - expected)}"


def test_docs_commands_name_real_files_and_targets():
    text = deploy_section()
    for path in set(re.findall(r"(?:charts|k8s)/[\w./-]+\.yaml", text)):
        assert (ROOT / path).exists(), path
    makefile = (ROOT / "mk" / "k8s.mk").read_text()
    for target in set(re.findall(r"`make ([\w-]+)", text)):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target
