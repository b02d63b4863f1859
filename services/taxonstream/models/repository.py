"""Write Triton's model repository: `<out>/<model>/config.pbtxt`, `<out>/<model>/<version>/...`, `models.json`.

`ensure_repository` is what the local stack calls before starting Triton: it rebuilds only when the
recipe changed. The recipe hash covers everything that decides the written files (the sources of the
model, export and config modules, the contract, the stand-in configs, the target and the torch version),
so it is computed without importing torch or exporting anything; `models.json` records it and is written
last, making it the completion marker.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .contract import ALL_MODELS, CLIP_IMAGE, CLIP_TEXT, DETECTOR, ModelContract
from .triton_config import Target, render_config, write_triton_files

MANIFEST_NAME = "models.json"
MANIFEST_FORMAT = 1
PARITY_TOLERANCE = 1e-4  # torch vs onnxruntime, absolute; measured ~2e-5 for the encoder
_PACKAGE_DIR = Path(__file__).resolve().parent
_RECIPE_SOURCES = (
    "contract.py",
    "seeding.py",
    "clip_standin.py",
    "detector_standin.py",
    "onnx_export.py",
    "triton_config.py",
    "triton_python_model.py",
    "repository.py",
)


@dataclass(frozen=True)
class BuiltModel:
    """A torch module ready to export, with the facts the manifest records about it."""

    module: Any  # torch.nn.Module; typed loosely so this module imports without torch
    example_input: Any  # torch.Tensor [1, *input dims]
    settings: dict[str, Any]
    description: str


def _image_model(build: Callable[[Any], Any], config: Any, description: str) -> BuiltModel:
    """A stand-in taking square RGB images of `config.image_size` pixels."""
    import torch

    return BuiltModel(
        module=build(config),
        example_input=torch.zeros(1, 3, config.image_size, config.image_size),
        settings=config.as_dict(),
        description=description,
    )


def _build_clip_image() -> BuiltModel:
    from .clip_standin import VisionTowerConfig, build_clip_standin

    return _image_model(
        build_clip_standin,
        VisionTowerConfig(),
        "STAND-IN for BioCLIP: tiny random ViT-B/32-style image tower; embeddings only tell "
        "images apart, they carry no biology",
    )


def _build_detector() -> BuiltModel:
    from .detector_standin import DetectorConfig, build_detector_standin

    return _image_model(
        build_detector_standin,
        DetectorConfig(),
        "STAND-IN for a one-class specimen DETR: tiny random conv net with DETR's output "
        "convention; its boxes are not detections",
    )


def _build_clip_text() -> BuiltModel:
    import torch

    from .clip_standin import TextTowerConfig, build_clip_text_standin

    config = TextTowerConfig()
    example = torch.zeros(1, config.context_length, dtype=torch.int64)
    example[0, :3] = torch.tensor([49406, 320, 49407])
    return BuiltModel(
        module=build_clip_text_standin(config),
        example_input=example,
        settings=config.as_dict(),
        description="STAND-IN for BioCLIP's text tower: tiny random CLIP text transformer over CLIP's BPE "
        "vocabulary; its embeddings carry no meaning, zero-shot results with it are arbitrary",
    )


BUILDERS: dict[str, Callable[[], BuiltModel]] = {
    CLIP_IMAGE.name: _build_clip_image,
    DETECTOR.name: _build_detector,
    CLIP_TEXT.name: _build_clip_text,
}


def recipe_hash(target: Target | str) -> str:
    """sha256 over everything that decides the repository's content, for `target`."""
    digest = hashlib.sha256()
    digest.update(f"format={MANIFEST_FORMAT};target={Target(target).value};".encode())
    try:
        digest.update(f"torch={metadata.version('torch')};".encode())
    except metadata.PackageNotFoundError:
        digest.update(b"torch=absent;")
    for name in _RECIPE_SOURCES:
        digest.update(name.encode() + b"\0" + (_PACKAGE_DIR / name).read_bytes() + b"\0")
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest_entry(contract: ModelContract, built: BuiltModel, onnx_path: Path, parity: float) -> dict[str, Any]:
    first_input = contract.inputs[0]
    entry: dict[str, Any] = {
        "name": contract.name,
        "version": contract.version,
        "model_id": contract.model_id,
        "family": contract.family,
        "task": contract.task,
        "standin": contract.standin,
        "description": built.description,
        "input_size": list(first_input.dims[1:]),
        "max_batch_size": contract.max_batch_size,
        "inputs": [asdict(spec) for spec in contract.inputs],
        "outputs": [asdict(spec) for spec in contract.outputs],
        "onnx_sha256": _sha256_file(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
        "torch_vs_onnxruntime_max_abs_diff": parity,
        "settings": built.settings,
    }
    if contract.task in {"image-embedding", "text-embedding"}:
        entry["embedding_dim"] = contract.outputs[0].dims[0]
        entry["embedding_normalised"] = False
    return entry


def _random_input(rng: Any, dims: tuple[int, ...], data_type: str) -> Any:
    """A batch of 3 inputs: floats in [0, 1), or token ids shaped like a tokenizer's (ids, EOT, zeros)."""
    import numpy as np

    if data_type != "TYPE_INT64":
        return rng.random((3, *dims), dtype=np.float32)
    ids = np.zeros((3, *dims), dtype=np.int64)
    for row, length in enumerate((2, 9, dims[-1])):
        ids[row, :length] = rng.integers(1, 49000, length)
        ids[row, length - 1] = 49407
    return ids


def _write_model(contract: ModelContract, target: Target, model_dir: Path) -> dict[str, Any]:
    import numpy as np

    from .onnx_export import export_checked

    built = BUILDERS[contract.name]()
    # A batch of 3 random inputs checks both the numbers and that the batch axis really is dynamic.
    rng = np.random.default_rng(0)
    feeds = {spec.name: _random_input(rng, spec.dims, spec.data_type) for spec in contract.inputs}
    exported = export_checked(built.module, [built.example_input], model_dir, contract, feeds, PARITY_TOLERANCE)
    write_triton_files(model_dir, contract, target, render_config(contract, target))
    return _manifest_entry(contract, built, exported.path, exported.parity)


def read_manifest(out_dir: Path | str) -> dict[str, Any] | None:
    """The repository's models.json, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(out_dir) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def _expected_files(entry: dict[str, Any], target: str) -> list[str]:
    files = [f"{entry['name']}/config.pbtxt", f"{entry['name']}/{entry['version']}/model.onnx"]
    if target == Target.LOCAL:
        files.append(f"{entry['name']}/{entry['version']}/model.py")
    return files


def is_current(out_dir: Path | str, target: Target | str = Target.LOCAL) -> bool:
    """True when `out_dir` holds a complete repository written from the current recipe for `target`."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    if not manifest or manifest.get("content_hash") != recipe_hash(target):
        return False
    return all(
        (out_dir / relative).is_file()
        for entry in manifest.get("models", [])
        for relative in _expected_files(entry, manifest.get("target", ""))
    )


@contextmanager
def _exclusive(out_dir: Path) -> Iterator[None]:
    """One writer at a time per repository (e.g. two test processes starting the stack together)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _replace_dir(new: Path, destination: Path, trash: Path) -> None:
    """Swap `new` in for `destination` by renames, so Triton never sees a half-written model.

    The old copy moves into `trash` (the staging directory, outside the repository) rather than beside
    the models, where a polling Triton could take it for a model.
    """
    if destination.exists():
        destination.rename(trash / f"{destination.name}.retired")
    new.rename(destination)


def _write_unlocked(out_dir: Path, target: Target) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = read_manifest(out_dir) or {}
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-build-", dir=out_dir.parent))
    try:
        entries = [_write_model(contract, target, staging / contract.name) for contract in ALL_MODELS]
        for contract in ALL_MODELS:
            _replace_dir(staging / contract.name, out_dir / contract.name, trash=staging)
        written = {contract.name for contract in ALL_MODELS}
        for stale in previous.get("models", []):  # models we wrote before and no longer do
            name = str(stale.get("name", ""))
            if name and name not in written and Path(name).name == name and not name.startswith("."):
                shutil.rmtree(out_dir / name, ignore_errors=True)
        manifest = {
            "format": MANIFEST_FORMAT,
            "content_hash": recipe_hash(target),
            "target": target.value,
            "generated_by": "taxonstream models repository",
            "models": entries,
        }
        partial = out_dir / f".{MANIFEST_NAME}.partial"
        partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        partial.replace(out_dir / MANIFEST_NAME)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def write_repository(out_dir: Path | str, target: Target | str = Target.LOCAL) -> Path:
    """Build the models and (re)write the repository at `out_dir` unconditionally."""
    out_dir = Path(out_dir).resolve()
    with _exclusive(out_dir):
        return _write_unlocked(out_dir, Target(target))


def ensure_repository(out_dir: Path | str, target: Target | str = Target.LOCAL) -> Path:
    """Make sure `out_dir` holds the current repository for `target`; a no-op when it already does."""
    out_dir = Path(out_dir).resolve()
    target = Target(target)
    if is_current(out_dir, target):
        return out_dir
    with _exclusive(out_dir):
        if not is_current(out_dir, target):  # another process may have finished it while we waited
            _write_unlocked(out_dir, target)
    return out_dir


def describe_repository(out_dir: Path) -> list[str]:
    """A line per model of a written repository, and where it is."""
    manifest = read_manifest(out_dir) or {}
    lines = []
    for entry in manifest.get("models", []):
        standin = " STAND-IN" if entry.get("standin") else ""
        lines.append(
            f"{entry['model_id']:28s} {entry['family']:10s} {entry['task']:20s}{standin}  "
            f"(torch vs onnxruntime max |diff| {entry['torch_vs_onnxruntime_max_abs_diff']:.2g})"
        )
    lines.append(f"{manifest.get('target', '')} repository at {out_dir}".strip())
    return lines
