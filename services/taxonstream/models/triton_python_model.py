"""Triton Python-backend model that runs `model.onnx` (next to this file) with onnxruntime on CPU.

This file is not imported by taxonstream: the repository writer copies it verbatim to
`<repository>/<model>/<version>/model.py` for the local target, where Triton's Python stub loads it.
It is generic: tensor names, dims and types come from the model's config.pbtxt.

execute() receives every request the dynamic batcher grouped together. It concatenates their inputs
along the batch axis, runs the session once, and splits the outputs back: one onnxruntime call per
batch, not per request, is what makes dynamic batching pay. A malformed request gets an error response of
its own and does not fail the others.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils

_NUMPY_TYPES = {
    "TYPE_FP32": np.float32,
    "TYPE_FP16": np.float16,
    "TYPE_FP64": np.float64,
    "TYPE_INT64": np.int64,
    "TYPE_INT32": np.int32,
    "TYPE_UINT8": np.uint8,
}


def _tensor_specs(config_entries):
    return [
        (entry["name"], tuple(int(d) for d in entry["dims"]), _NUMPY_TYPES[entry["data_type"]])
        for entry in config_entries
    ]


def _parameter(model_config, key, default):
    value = model_config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value or default


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        self.inputs = _tensor_specs(model_config["input"])
        self.outputs = _tensor_specs(model_config["output"])
        self.max_batch_size = int(model_config.get("max_batch_size", 0))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(_parameter(model_config, "intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        onnx_path = Path(__file__).resolve().with_name("model.onnx")
        self.session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def _request_inputs(self, request):
        """The request's input arrays and batch size; raises ValueError when they break the config."""
        arrays, batch = [], None
        for name, dims, dtype in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input {name!r}")
            array = tensor.as_numpy()
            if array.ndim != len(dims) + 1 or any(d not in (-1, a) for d, a in zip(dims, array.shape[1:], strict=True)):
                raise ValueError(f"input {name!r} has shape {list(array.shape)}, expected [-1, {list(dims)}]")
            if batch is not None and array.shape[0] != batch:
                raise ValueError("inputs disagree on the batch size")
            batch = array.shape[0]
            arrays.append(array.astype(dtype, copy=False))
        return arrays, batch

    def execute(self, requests):
        responses = [None] * len(requests)
        valid, per_input, sizes = [], [[] for _ in self.inputs], []
        for index, request in enumerate(requests):
            try:
                arrays, batch = self._request_inputs(request)
            except ValueError as error:
                responses[index] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error)))
                continue
            valid.append(index)
            sizes.append(batch)
            for column, array in zip(per_input, arrays, strict=True):
                column.append(array)

        if valid:
            # One request (the usual case at small batches, and always at max_batch_size) is fed as it
            # came, zero-copy from the stub's shared memory; only a grouped batch is concatenated.
            feeds = {
                name: column[0] if len(column) == 1 else np.concatenate(column)
                for (name, _, _), column in zip(self.inputs, per_input, strict=True)
            }
            try:
                results = self.session.run([name for name, _, _ in self.outputs], feeds)
            except Exception as error:  # onnxruntime raises its own types; report them per request
                for index in valid:
                    responses[index] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"onnxruntime: {error}")
                    )
                return responses
            bounds = np.cumsum(sizes)[:-1]
            splits = [[result] if len(sizes) == 1 else np.split(result, bounds) for result in results]
            for position, index in enumerate(valid):
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(split[position], dtype=dtype))
                    for (name, _, dtype), split in zip(self.outputs, splits, strict=True)
                ]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self):
        self.session = None
