"""Print the runtime requirements of one service image, taken from pyproject.toml's dependencies.

    python tools/k8s/image_requirements.py core     # without the Triton client
    python tools/k8s/image_requirements.py triton   # everything, plus the `text` extra (detector, embedder)
    python tools/k8s/image_requirements.py indexer  # core plus the `milvus` and `landcover` extras
    python tools/k8s/image_requirements.py portal   # core plus the `portal` extra (the explorer's web stack)

The Dockerfile runs this in its build stage, so the images follow pyproject.toml with no second
list to keep in step. Standard library only: it runs on the bare Python base image.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
# Only the services that run models talk to Triton; the others' images leave its client out.
TRITON_ONLY = {"tritonclient"}
VARIANTS = ("core", "triton", "indexer", "portal")


def requirement_name(requirement: str) -> str:
    """The normalised project name of a PEP 508 requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(variant: str, pyproject: Path = PYPROJECT) -> list[str]:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    project = tomllib.loads(pyproject.read_text())["project"]
    deps = project["dependencies"]
    if variant == "triton":
        # The embedder tokenizes text (CLIP BPE through transformers' tokenizer; no torch needed).
        return [*deps, *project["optional-dependencies"]["text"]]
    core = [dep for dep in deps if requirement_name(dep) not in TRITON_ONLY]
    if variant == "indexer":
        # TAXONSTREAM_INDEX_BACKEND=milvus must work from the stock image: pymilvus, and Milvus Lite for a .db uri.
        # …and the `landcover` extra (rasterio, pyproj), so TAXONSTREAM_LANDCOVER_RASTER works as shipped.
        extras = project["optional-dependencies"]
        return [*core, *extras["milvus"], *extras["landcover"]]
    if variant == "portal":
        return [*core, *project["optional-dependencies"]["portal"]]
    return core


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in VARIANTS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(VARIANTS)}}}")
    print("\n".join(requirements(sys.argv[1])))
