"""Images per second of an ONNX model in onnxruntime on this CPU, at a given batch size and thread count."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def images_per_second(onnx_path: Path, batch: int, threads: int = 1, min_seconds: float = 2.0) -> float:
    """Throughput of repeated session.run calls on random inputs, after one warm-up call."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {node.name: rng.random((batch, *node.shape[1:]), dtype=np.float32) for node in session.get_inputs()}
    session.run(None, feeds)
    runs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < min_seconds or runs < 3:
        session.run(None, feeds)
        runs += 1
    return runs * batch / elapsed
