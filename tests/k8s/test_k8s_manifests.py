"""k8s/: the plain manifests are exactly the chart rendered with default values."""

from __future__ import annotations

import shutil

import yaml
from k8s_support import CRD_KINDS, ROOT, SERVICES, manifests


def test_plain_manifests_match_the_chart():
    diffs = manifests.drift()
    assert not diffs, "k8s/ drifted from the chart: run `make manifests`\n" + "".join(diffs)[:4000]


def test_drift_is_detected(tmp_path, monkeypatch):
    copy = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", copy)
    monkeypatch.setattr(manifests, "MANIFESTS", copy)
    assert manifests.drift() == []
    path = copy / "taxonstream.yaml"
    path.write_text(path.read_text().replace("maxUnavailable: 1", "maxUnavailable: 2", 1))
    (copy / "stale.yaml").write_text("kind: ConfigMap\n")
    diffs = manifests.drift()
    assert len(diffs) == 2 and "maxUnavailable: 2" in "".join(diffs)
    assert "stale.yaml" in diffs[0]


def test_plain_manifests_are_complete_and_split_by_autoscaler():
    docs = {
        name: [d for d in yaml.safe_load_all((ROOT / "k8s" / name).read_text()) if d]
        for name in ("taxonstream.yaml", "autoscaling/keda.yaml", "autoscaling/hpa.yaml")
    }
    main = docs["taxonstream.yaml"]
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in main if d["kind"] == "Deployment"}
    assert deployments == set(SERVICES) | {"triton"}
    # `kubectl apply -f k8s/taxonstream.yaml` needs no CRD; the autoscalers are one file or the other.
    assert not {d["kind"] for d in main} & CRD_KINDS
    assert all(d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubectl" for d in main)
    assert not any("helm.sh/hook" in (d["metadata"].get("annotations") or {}) for d in main)
    keda = {d["spec"]["scaleTargetRef"]["name"] for d in docs["autoscaling/keda.yaml"]}
    hpa = {d["spec"]["scaleTargetRef"]["name"] for d in docs["autoscaling/hpa.yaml"]}
    assert keda == hpa == {f"taxonstream-{s}" for s in SERVICES if s != "indexer"}
