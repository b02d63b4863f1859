"""How an exported checkpoint lands in a model repository (`models install bioclip|bioclip2|detr`): built in
a staging folder beside the repository, then swapped in by one rename, so Triton's polling never loads a
half-written model; and the model.json fields every install records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .contract import ModelContract

if TYPE_CHECKING:  # onnx_export imports torch; this module does not need it
    from .onnx_export import CheckedExport


def staging_dir(out_dir: Path, name: str) -> Path:
    """An empty `.<repository>-<name>.partial` folder beside the repository (outside it: not a model)."""
    staging = out_dir.parent / f".{out_dir.name}-{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def installed_entry(contract: ModelContract, checkpoint: Path, exported: CheckedExport) -> dict[str, Any]:
    """model.json's fields common to every installed checkpoint (the caller adds its family's)."""
    return {
        "name": contract.name,
        "version": contract.version,
        "model_id": contract.model_id,
        "family": contract.family,
        "task": contract.task,
        "standin": False,
        "checkpoint": str(checkpoint),
        "parity": exported.parity,
        "export_seconds": round(exported.export_seconds, 2),
        "parity_seconds": round(exported.parity_seconds, 2),
    }


def publish(staging: Path, out_dir: Path, entry: dict[str, Any]) -> None:
    """Write `entry` as the staged model's model.json, then put the model in place as `<out_dir>/<name>`."""
    (staging / "model.json").write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n")
    model_dir = out_dir / entry["name"]
    out_dir.mkdir(parents=True, exist_ok=True)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    staging.rename(model_dir)
