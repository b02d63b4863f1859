"""Export a torch module to ONNX with a dynamic batch axis, and check onnxruntime agrees with torch.

Exporter: torch 2.13's TorchScript-based exporter (`dynamo=False`). The default dynamo exporter needs the
`onnxscript` package, which is not installed here and would be one more dependency for no gain on models
this plain. The legacy path is deprecated upstream; its warning is silenced here so the CLI stays quiet.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .contract import ModelContract

OPSET = 17  # onnxruntime >= 1.14 and Triton's onnxruntime backend both run it
BATCH_AXIS = "batch"


def export_onnx(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> Path:
    """Write `module` to `path` as ONNX; axis 0 of every input and output is a dynamic batch axis."""
    module = module.eval()
    dynamic_axes = {name: {0: BATCH_AXIS} for name in (*input_names, *output_names)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(
            module,
            tuple(example_inputs),
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def max_abs_difference(
    module: torch.nn.Module,
    onnx_path: Path,
    inputs: dict[str, np.ndarray],
) -> dict[str, float]:
    """Run the same inputs through torch and onnxruntime; the largest absolute difference per output."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    output_names = [output.name for output in session.get_outputs()]
    ort_outputs = session.run(output_names, inputs)
    with torch.no_grad():
        torch_outputs = module(*(torch.from_numpy(inputs[i.name]) for i in session.get_inputs()))
    if isinstance(torch_outputs, torch.Tensor):
        torch_outputs = (torch_outputs,)
    return {
        name: float(np.max(np.abs(ort - ref.numpy())))
        for name, ort, ref in zip(output_names, ort_outputs, torch_outputs, strict=True)
    }


@dataclass(frozen=True)
class CheckedExport:
    """An ONNX file that onnxruntime runs like torch, and what the check found and cost."""

    path: Path
    parity: float  # the largest absolute torch vs onnxruntime difference over the outputs
    export_seconds: float
    parity_seconds: float


def export_checked(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    model_dir: Path,
    contract: ModelContract,
    feeds: dict[str, np.ndarray],
    tolerance: float,
) -> CheckedExport:
    """Export `module` as `model_dir/<version>/model.onnx` with the contract's tensor names, then run `feeds`
    through torch and onnxruntime. Further apart than `tolerance`: the version folder is removed and
    RuntimeError says by how much (a model Triton would serve differently is never left behind)."""
    started = time.perf_counter()
    path = export_onnx(
        module,
        example_inputs,
        model_dir / contract.version / "model.onnx",
        [spec.name for spec in contract.inputs],
        [spec.name for spec in contract.outputs],
    )
    export_seconds = time.perf_counter() - started
    started = time.perf_counter()
    parity = max(max_abs_difference(module, path, feeds).values())
    if parity > tolerance:
        shutil.rmtree(path.parent, ignore_errors=True)
        raise RuntimeError(f"{contract.name}: onnxruntime differs from torch by {parity:g}")
    return CheckedExport(path, parity, export_seconds, time.perf_counter() - started)
