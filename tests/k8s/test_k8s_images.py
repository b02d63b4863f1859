"""Images: what the chart runs is what skaffold builds, and the Dockerfile builds it lean and non-root."""

from __future__ import annotations

import fnmatch
import modulefinder
import re
import tomllib

import pytest
from k8s_support import (
    CHART,
    ROOT,
    SCENARIOS,
    SERVICES,
    image_requirements,
    manifests,
    pod_specs,
    render,
    render_values,
    skaffold_config,
    skaffold_images,
)

# Third-party images the chart runs; each comes from values the user controls, never built here.
THIRD_PARTY = ("triton.image", "kafka.bundled.image", "s3.bundled.image")


def _third_party_images(values: dict) -> set[str]:
    found = set()
    for path in THIRD_PARTY:
        node = values
        for part in path.split("."):
            node = node[part]
        found.add(f"{node['repository']}:{node['tag']}")
    return found


def _repository(image: str) -> str:
    return image.split("@")[0].rsplit(":", 1)[0]


def test_every_image_is_built_by_skaffold_or_is_a_declared_dependency(scenario):
    objects = render(scenario)
    defaults = manifests.load_values(CHART / "values.yaml")
    allowed_third_party = _third_party_images(manifests.deep_merge(defaults, SCENARIOS[scenario]))
    built = skaffold_images()
    for obj, spec in pod_specs(objects):
        for container in spec["containers"] + spec.get("initContainers", []):
            image = container["image"]
            assert _repository(image) in built or image in allowed_third_party, (obj["metadata"]["name"], image)


def test_each_service_runs_its_own_artifact():
    objects = render("default")
    for obj, spec in pod_specs(objects):
        name = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        if name in SERVICES:
            assert spec["containers"][0]["image"] == f"taxonstream-{name}:0.1.0"


def test_skaffold_sets_each_service_image_to_its_artifact():
    (release,) = skaffold_config()["deploy"]["helm"]["releases"]
    templates = release["setValueTemplates"]
    assert len(templates) == 3 * len(SERVICES)
    values: dict = {}
    for name in SERVICES:
        variable = f"taxonstream_{name}"  # skaffold's name for the artifact: '-' and '/' become '_'
        assert templates[f"{name}.image.repository"] == f"{{{{.IMAGE_REPO_{variable}}}}}"
        assert templates[f"{name}.image.tag"] == f"{{{{.IMAGE_TAG_{variable}}}}}"
        assert templates[f"{name}.image.digest"] == f"{{{{.IMAGE_DIGEST_{variable}}}}}"
        values[name] = {
            "image": {
                "repository": f"registry.test/taxonstream-{name}",
                "tag": "abc123",
                "digest": "sha256:" + "0" * 64,
            }
        }
    # What the chart makes of skaffold's values: the pushed image, pinned by digest.
    for obj, spec in pod_specs(render_values(values)):
        name = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        if name in SERVICES and obj["kind"] == "Deployment":
            assert spec["containers"][0]["image"] == f"registry.test/taxonstream-{name}:abc123@sha256:{'0' * 64}"


# --- Dockerfile -----------------------------------------------------------------------------------


def _stages() -> dict[str, dict]:
    """Dockerfile stages: name -> {"base": ..., "instructions": [(keyword, args)]}."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args.strip(), re.IGNORECASE)
            assert match, f"every stage is named: {line}"
            current = {"base": match.group(1), "instructions": []}
            stages[match.group(2)] = current
        elif current is not None:
            current["instructions"].append((keyword, args.strip()))
    return stages


def _lineage(stages: dict[str, dict], name: str) -> list[str]:
    chain = [name]
    while stages[chain[-1]]["base"] in stages:
        chain.append(stages[chain[-1]]["base"])
    return chain


def test_every_artifact_is_a_dockerfile_target_running_its_service():
    stages = _stages()
    for artifact in skaffold_config()["build"]["artifacts"]:
        target = artifact["docker"]["target"]
        assert artifact["image"] == f"taxonstream-{target}" and target in SERVICES
        assert (ROOT / artifact.get("context", ".") / artifact["docker"]["dockerfile"]).exists()
        (cmd,) = [a for k, a in stages[target]["instructions"] if k == "CMD"]
        assert cmd == f'["python", "-m", "taxonstream.{target}"]'


def test_runtime_images_are_non_root_and_have_no_build_tools():
    stages = _stages()
    for target in SERVICES:
        chain = _lineage(stages, target)
        instructions = [i for stage in reversed(chain) for i in stages[stage]["instructions"]]
        users = [args for keyword, args in instructions if keyword == "USER"]
        assert users and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1]), (target, users)
        runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
        assert not re.search(r"apt-get|apk add|gcc|build-essential|pip (--python \S+ )?install", runs), target
        assert "pip uninstall" in runs, "the base image's pip is removed from runtime images"
        copied = [args for keyword, args in instructions if keyword == "COPY" and "--from=" in args]
        venvs = [c for c in copied if "/opt/venv" in c]
        venv_copy = r"--from=venv-(core|triton|indexer) /opt/venv /opt/venv"
        assert venvs and all(re.search(venv_copy, c) for c in venvs), copied
        # Besides the venv, only the embedder takes something from a build stage: the tokenizer vocabulary.
        others = [c for c in copied if c not in venvs]
        assert others == (["--from=vocab /opt/tokenizer /opt/tokenizer"] if target == "embedder" else []), others


def test_the_embedder_image_carries_its_tokenizer_vocabulary():
    stages = _stages()
    env = " ".join(a for s in _lineage(stages, "embedder") for k, a in stages[s]["instructions"] if k == "ENV")
    assert "TAXONSTREAM_TOKENIZER_DIR=/opt/tokenizer" in env and "HF_HUB_OFFLINE=1" in env
    runs = " ".join(a for k, a in stages["vocab"]["instructions"] if k == "RUN")
    assert "ensure_vocab(Path('/opt/tokenizer'))" in runs


def test_only_model_services_carry_the_triton_client():
    stages = _stages()
    for target in SERVICES:
        venv = {"detector": "venv-triton", "embedder": "venv-triton", "indexer": "venv-indexer"}
        venv = venv.get(target, "venv-core")
        copied = [a for s in _lineage(stages, target) for k, a in stages[s]["instructions"] if k == "COPY"]
        assert any(f"--from={venv} " in c for c in copied), target
    for venv, variant in (("venv-core", "core"), ("venv-triton", "triton"), ("venv-indexer", "indexer")):
        runs = " ".join(a for k, a in stages[venv]["instructions"] if k == "RUN")
        assert f"image_requirements.py {variant} " in runs and "--only-binary=:all:" in runs


def test_image_requirements_follow_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"]
    core = image_requirements.requirements("core")
    assert image_requirements.requirements("triton") == [*deps, *project["optional-dependencies"]["text"]]
    assert not any(image_requirements.requirement_name(d) == "torch" for d in image_requirements.requirements("triton"))
    assert not any(image_requirements.requirement_name(d) == "tritonclient" for d in core)
    assert set(deps) - set(core) == {d for d in deps if d.startswith("tritonclient")}
    # The indexer's image can run the Milvus backend and read a land-cover raster as shipped.
    extras = project["optional-dependencies"]
    assert image_requirements.requirements("indexer") == [*core, *extras["milvus"], *extras["landcover"]]
    with pytest.raises(ValueError):
        image_requirements.requirements("gpu")


def _dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes) or (
            pattern.startswith("**/") and any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts)
        ):
            excluded = not negate
    return excluded


def test_build_context_holds_what_the_dockerfile_copies_and_little_else():
    sources = []
    for stage in _stages().values():
        for keyword, args in stage["instructions"]:
            if keyword == "COPY" and "--from=" not in args:
                sources += args.split()[:-1]
    assert sources, "the Dockerfile copies from the build context"
    for source in sources:
        source = source.rstrip("/")
        assert (ROOT / source).exists(), source
        assert not _dockerignore_excludes(source), f".dockerignore drops {source}"
    assert not _dockerignore_excludes("services/taxonstream/fetcher/__main__.py")
    for dropped in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/k8s/test_k8s_images.py",
        "charts/taxonstream/Chart.yaml",
        "services/taxonstream/core/__pycache__/bus.cpython-311.pyc",
    ):
        assert _dockerignore_excludes(dropped), dropped


@pytest.mark.parametrize("service", SERVICES)
def test_service_imports_fit_its_image(service, tmp_path):
    # The image puts services/taxonstream/ at /app/taxonstream; follow the imports of `python -m
    # taxonstream.<service>` statically (nothing runs) and see whether the Triton client is reached.
    (tmp_path / "taxonstream").symlink_to(ROOT / "services" / "taxonstream")
    finder = modulefinder.ModuleFinder(path=[str(tmp_path)])
    finder.run_script(str(ROOT / "services" / "taxonstream" / service / "__main__.py"))
    assert any(m.startswith(f"taxonstream.{service}") for m in finder.modules), "the service's package was found"
    uses_triton = any(m == "tritonclient" or m.startswith("tritonclient.") for m in finder.badmodules)
    assert uses_triton == (service in {"detector", "embedder"})
