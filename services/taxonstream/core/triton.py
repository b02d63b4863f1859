"""Triton inference over gRPC: one model, numpy in and out, unavailability as Transient."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from taxonstream.core import metrics
from taxonstream.core.errors import Transient

log = logging.getLogger(__name__)


class TritonModel:
    def __init__(self, url: str, model: str, version: str = "") -> None:
        self.url = url
        self.model = model
        self.version = version
        # The gRPC client is not shared across threads (the servers call from a thread pool).
        self._local = threading.local()

    @property
    def client(self) -> triton.InferenceServerClient:
        if not hasattr(self._local, "client"):
            self._local.client = triton.InferenceServerClient(self.url)
        return self._local.client

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        request = []
        for name, array in inputs.items():
            tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            request.append(tensor)
        wanted = [triton.InferRequestedOutput(name) for name in outputs]
        try:
            with metrics.timed("model"):  # the round trip: Triton's compute plus (de)serialising the tensors
                result = self.client.infer(self.model, request, model_version=self.version, outputs=wanted)
        except InferenceServerException as error:
            if _is_unavailable(error):
                raise Transient(f"Triton {self.model} unavailable: {error.message()}") from error
            raise
        return {name: result.as_numpy(name) for name in outputs}

    def input_shape(self, index: int = 0) -> list[int]:
        """The model's declared input shape (with -1 for the batch axis)."""
        try:
            metadata = self.client.get_model_metadata(self.model, self.version, as_json=True)
        except InferenceServerException as error:
            if _is_unavailable(error):
                raise Transient(f"Triton {self.model} unavailable: {error.message()}") from error
            raise
        return [int(d) for d in metadata["inputs"][index]["shape"]]

    def load(self) -> None:
        """Ask Triton to load the model when it is not ready (Triton with explicit model control)."""
        if not self.client.is_model_ready(self.model, self.version):
            self.client.load_model(self.model)

    def wait_ready(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client.is_model_ready(self.model, self.version):
                    return True
            except InferenceServerException:
                pass
            time.sleep(0.5)
        return False


def _is_unavailable(error: InferenceServerException) -> bool:
    status = (error.status() or "").upper()
    text = (error.message() or "").lower()
    return "UNAVAILABLE" in status or "DEADLINE" in status or "not ready" in text or "failed to connect" in text
