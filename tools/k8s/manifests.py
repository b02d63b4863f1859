"""Render the Helm chart offline and write the plain manifests in k8s/ (for users without Helm).

    python tools/k8s/manifests.py            # rewrite k8s/ from the chart's default values
    python tools/k8s/manifests.py --check    # exit 1 when k8s/ has drifted from the chart
    python tools/k8s/manifests.py --lint     # strict helm lint of the chart
    python tools/k8s/manifests.py --package DIR

Rendering uses the Helm v4 SDK in PyPI `helm-python-sdk` (no helm binary, no cluster). The tests
import this module, so the manifests they check are produced exactly as `make manifests` does.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "taxonstream"
MANIFESTS = ROOT / "k8s"
RELEASE = "taxonstream"
NAMESPACE = "taxonstream"
# Helm's own install order for the kinds the chart renders, so `kubectl apply` creates
# dependencies (accounts, config, services) before the workloads that use them.
KIND_ORDER = [
    "Namespace",
    "NetworkPolicy",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "Service",
    "PodDisruptionBudget",
    "StatefulSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "Ingress",
    "ScaledObject",
    "ServiceMonitor",
    "Pod",
]
# libyaml when present: parsing the render dominates the time of a check.
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):
    """Multi-line strings (config files in ConfigMaps, scripts) as readable literal blocks."""


Dumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)
HEADER = (
    "# Generated from charts/taxonstream by tools/k8s/manifests.py ({what}).\n"
    "# Do not edit: change the chart and run `make manifests`.\n"
)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of values files: maps merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_values(*files: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """User values as `helm -f a.yaml -f b.yaml` would pass them (chart defaults excluded)."""
    values: dict[str, Any] = {}
    for path in files:
        values = deep_merge(values, yaml.load(Path(path).read_text(), Loader=Loader) or {})
    return deep_merge(values, overrides or {})


def is_hook(obj: dict[str, Any]) -> bool:
    return "helm.sh/hook" in (obj.get("metadata", {}).get("annotations") or {})


def render(
    values: dict[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    hooks: bool = True,
    release_service: str | None = None,
) -> list[dict[str, Any]]:
    """Every object the chart renders, in install order; `release_service` relabels who manages them."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values or {}, name=release, namespace=namespace, is_install=True)
    objects = []
    for path in sorted(rendered):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        objects.extend(obj for obj in yaml.load_all(rendered[path], Loader=Loader) if obj)
    if not hooks:
        objects = [obj for obj in objects if not is_hook(obj)]
    if release_service:
        for obj in objects:
            obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] = release_service
    return sorted(objects, key=lambda o: (KIND_ORDER.index(o["kind"]), o["metadata"]["name"]))


def dump(objects: list[dict[str, Any]], what: str) -> str:
    body = yaml.dump_all(objects, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=120)
    return HEADER.format(what=what) + "---\n" + body


def manifest_files() -> dict[str, str]:
    """k8s/ file name -> content. The defaults give the whole system with KEDA autoscaling; the
    consumers' CPU HPAs for clusters without KEDA come from a keda.enabled=false render."""
    # Applied with kubectl, so not labelled as managed by Helm.
    default = render(hooks=False, release_service="kubectl")
    without_keda = render({"keda": {"enabled": False}}, hooks=False, release_service="kubectl")
    scaled = {o["metadata"]["name"] for o in default if o["kind"] == "ScaledObject"}
    return {
        "taxonstream.yaml": dump([o for o in default if o["kind"] != "ScaledObject"], "default values"),
        "autoscaling/keda.yaml": dump(
            [o for o in default if o["kind"] == "ScaledObject"], "default values; needs KEDA"
        ),
        "autoscaling/hpa.yaml": dump(
            [o for o in without_keda if o["kind"] == "HorizontalPodAutoscaler" and o["metadata"]["name"] in scaled],
            "keda.enabled=false; instead of keda.yaml",
        ),
    }


def drift() -> list[str]:
    """Unified diffs between k8s/ and a fresh render (empty when in sync)."""
    expected = manifest_files()
    diffs = []
    present = {p.relative_to(MANIFESTS).as_posix() for p in MANIFESTS.rglob("*.yaml")} if MANIFESTS.exists() else set()
    for name in sorted(present - expected.keys()):
        diffs.append(f"k8s/{name}: not produced by the chart any more\n")
    for name, text in expected.items():
        path = MANIFESTS / name
        current = path.read_text() if path.exists() else ""
        if current != text:
            diffs.append(
                "".join(
                    difflib.unified_diff(
                        current.splitlines(keepends=True), text.splitlines(keepends=True), f"k8s/{name}", "chart render"
                    )
                )
            )
    return diffs


def write() -> list[str]:
    files = manifest_files()
    for path in MANIFESTS.rglob("*.yaml"):
        path.unlink()
    for name, text in files.items():
        path = MANIFESTS / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return [f"k8s/{name}" for name in files]


def lint(values_files: list[str]) -> list[str]:
    """Strict lint problems (warnings and errors) for the chart with the given values files."""
    report = helm.lint(CHART, load_values(*values_files), strict=True)
    # Severity 1 is informational (e.g. "icon is recommended").
    return [f"{m['path']}: {m['error'].strip()}" for m in report["messages"] if m["severity"] >= 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="fail when k8s/ differs from the chart")
    group.add_argument("--lint", nargs="*", metavar="VALUES", help="strict lint, optionally with values files")
    group.add_argument("--package", metavar="DIR", help="write the chart archive into DIR")
    args = parser.parse_args(argv)
    if args.check:
        diffs = drift()
        sys.stdout.writelines(diffs)
        if diffs:
            print("k8s/ is out of date: run `make manifests`", file=sys.stderr)
        return 1 if diffs else 0
    if args.lint is not None:
        problems = lint(args.lint)
        print("\n".join(problems) or f"{CHART.relative_to(ROOT)}: lint clean (strict)")
        return 1 if problems else 0
    if args.package:
        Path(args.package).mkdir(parents=True, exist_ok=True)
        print(helm.package(CHART, destination=args.package))
        return 0
    print("wrote", ", ".join(write()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
