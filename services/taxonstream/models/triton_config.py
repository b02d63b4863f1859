"""Render a Triton `config.pbtxt` for one model of the contract, for the local or the cluster target.

local:   our dev/CI Triton (inside nvidia-pytriton) has only the Python backend, so the model is a
         `model.py` running the ONNX file through onnxruntime on CPU.
cluster: NVIDIA's Triton image on GPU nodes runs the same ONNX file natively (onnxruntime backend).
Both: the same tensor names and shapes, max_batch_size and dynamic batching.
"""

from __future__ import annotations

import shutil
from enum import StrEnum
from pathlib import Path

from .contract import ModelContract, TensorSpec


class Target(StrEnum):
    LOCAL = "local"
    CLUSTER = "cluster"


# How long Triton may hold a request to grow a batch. Local (one CPU instance): none. Requests that arrive
# while the instance is busy queue and still leave as one batch, so a delay only ever idles a free
# instance: tools/bench/embed measured 5 ms costing 2.7x at one image per call (108 -> 297 img/s) and
# 10-35 % at 1-4 images from 4 callers, and gaining nothing at 32. GPUs: a short wait fills the device.
QUEUE_DELAY_MICROSECONDS = {Target.LOCAL: 0, Target.CLUSTER: 2000}
# onnxruntime intra-op threads per model instance on the local target: the CI machine has 2 cores and
# runs two models beside Kafka and Ceph, so one thread each avoids oversubscription.
LOCAL_INTRA_OP_THREADS = 1


def _tensor_block(spec: TensorSpec) -> str:
    dims = ", ".join(str(d) for d in spec.dims)
    return f'  {{\n    name: "{spec.name}"\n    data_type: {spec.data_type}\n    dims: [ {dims} ]\n  }}'


def _tensor_list(kind: str, specs: tuple[TensorSpec, ...]) -> str:
    return f"{kind} [\n" + ",\n".join(_tensor_block(s) for s in specs) + "\n]"


def render_config(contract: ModelContract, target: Target | str) -> str:
    target = Target(target)
    if target is Target.LOCAL:
        runtime = 'backend: "python"'
        instances = "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]"
        extra = (
            f'parameters {{\n  key: "intra_op_threads"\n  value {{ string_value: "{LOCAL_INTRA_OP_THREADS}" }}\n}}\n'
        )
    else:
        runtime = 'platform: "onnxruntime_onnx"'
        instances = "instance_group [\n  {\n    count: 1\n    kind: KIND_GPU\n  }\n]"
        extra = ""
    standin = " (STAND-IN: random weights, no biology)" if contract.standin else ""
    return (
        f"# {contract.model_id} - {contract.family} {contract.task}{standin}.\n"
        "# Written by `python -m taxonstream.models repository`; do not edit by hand.\n"
        f'name: "{contract.name}"\n'
        f"{runtime}\n"
        f"max_batch_size: {contract.max_batch_size}\n"
        f"{_tensor_list('input', contract.inputs)}\n"
        f"{_tensor_list('output', contract.outputs)}\n"
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {QUEUE_DELAY_MICROSECONDS[target]}\n"
        "}\n"
        f"{instances}\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
        f"{extra}"
    )


def write_triton_files(model_dir: Path, contract: ModelContract, target: Target | str, config: str) -> None:
    """What Triton needs beside `<version>/model.onnx`: `config` as config.pbtxt and, for the local target,
    the Python backend that runs the ONNX file with onnxruntime (`<version>/model.py`)."""
    if Target(target) is Target.LOCAL:
        shutil.copyfile(Path(__file__).with_name("triton_python_model.py"), model_dir / contract.version / "model.py")
    (model_dir / "config.pbtxt").write_text(config)
