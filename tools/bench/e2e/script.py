"""The hand-glued chain a user writes today, in one Python process, keeping nothing durable.

    32 threads, each taking the next URL:
      GET with urllib3 (one shared PoolManager: keep-alive per host; 3 retries with backoff on 429/5xx)
      -> sha256 + md5 of the body (sum-buddy's digests); an sha256 already seen is an exact duplicate: dropped
      -> pHash with imagehash (taxonstream.integrity.phash.phash_bytes, the checksummer's own computation)
      -> decode, detector in onnxruntime, best box padded 1.4x, crop (the BIOSCAN crop tool's recipe)
      -> CLIP image encoder in onnxruntime on the crop, L2-normalised
    then every vector into a FAISS IndexFlatIP.

The ONNX files are the very ones the stack's Triton serves (<repository>/<model>/<version>/model.onnx,
located through the repository's models.json) with the preprocessing the detector and embedder use, and
one onnxruntime intra-op thread per call, as Triton's model instances are configured (intra_op_threads 1):
the 32 threads give the concurrency. A non-200 answer (after retries) counts as failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import onnxruntime
import urllib3
from PIL import Image

from taxonstream.integrity.phash import ImageUnreadable, phash_bytes
from taxonstream.models.preprocess import DEFAULT_CROP_PAD, clip_pixel_values, crop_box, detector_pixels, upright_rgb
from taxonstream.models.repository import read_manifest

DETECTOR = "detector_standin"  # the detector and embedder services' default models
ENCODER = "clip_standin_image"
THRESHOLD = 0.5  # the detector service's default: below it the whole image is kept
PARTS = ("fetch", "hash", "decode", "model", "index")


@dataclass
class OnnxModel:
    session: onnxruntime.InferenceSession
    inputs: list[str]
    outputs: list[str]

    def run(self, array: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.outputs, {self.inputs[0]: array})


def load_model(repository: Path, name: str) -> OnnxModel:
    """The model Triton serves under `name`, in onnxruntime with one intra-op thread."""
    manifest = read_manifest(repository)
    if manifest is None:
        raise FileNotFoundError(f"{repository}/models.json missing: start the stack first (taxonstream stack up)")
    entry = next((m for m in manifest["models"] if m["name"] == name), None)
    if entry is None:
        raise FileNotFoundError(f"model {name} is not in {repository}/models.json")
    path = repository / name / entry["version"] / "model.onnx"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return OnnxModel(session, [i["name"] for i in entry["inputs"]], [o["name"] for o in entry["outputs"]])


@dataclass
class ChainResult:
    records: int
    indexed: int = 0
    duplicate: int = 0
    failed: int = 0
    failed_by_reason: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    # Per part, summed over threads: wall seconds (with 32 threads on few cores, mostly waiting for a core
    # or the GIL) and the thread's own CPU seconds (time.thread_time), the absolute cost.
    busy: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))

    @property
    def good(self) -> int:
        return self.indexed + self.duplicate


class GluedChain:
    def __init__(self, repository: Path, threads: int = 32) -> None:
        self.threads = threads
        self.detector = load_model(repository, DETECTOR)
        self.encoder = load_model(repository, ENCODER)
        self.detector_side = int(self.detector.session.get_inputs()[0].shape[-1])
        self.http = urllib3.PoolManager(
            num_pools=64,
            maxsize=threads,
            timeout=urllib3.Timeout(connect=5.0, read=10.0),
            retries=urllib3.Retry(total=3, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504)),
        )
        self.lock = threading.Lock()
        self.warm_up()

    def warm_up(self) -> None:
        """One inference each, so session set-up is not timed."""
        side = self.detector_side
        self.detector.run(np.zeros((1, 3, side, side), np.float32))
        self.encoder.run(np.zeros((1, 3, 224, 224), np.float32))

    def run(self, urls: Sequence[str]) -> ChainResult:
        result = ChainResult(records=len(urls))
        seen: set[str] = set()
        vectors: list[np.ndarray] = []
        started = time.perf_counter()
        with ThreadPoolExecutor(self.threads, thread_name_prefix="glued") as pool:
            for outcome in pool.map(lambda url: self.one(url, seen, vectors, result), urls):
                if outcome == "indexed":
                    result.indexed += 1
                elif outcome == "duplicate":
                    result.duplicate += 1
                else:
                    result.failed += 1
                    result.failed_by_reason[outcome] += 1
        mark, cpu_mark = time.perf_counter(), time.thread_time()
        index = faiss.IndexFlatIP(vectors[0].shape[-1]) if vectors else None
        if index is not None:
            index.add(np.stack(vectors).astype(np.float32))
        result.busy["index"] += time.perf_counter() - mark
        result.cpu["index"] += time.thread_time() - cpu_mark
        result.seconds = time.perf_counter() - started
        return result

    def one(self, url: str, seen: set[str], vectors: list[np.ndarray], result: ChainResult) -> str:
        """One URL through the chain; returns "indexed", "duplicate" or a failure reason."""
        busy, cpu = dict.fromkeys(PARTS, 0.0), dict.fromkeys(PARTS, 0.0)
        try:
            return self._chain(url, seen, vectors, busy, cpu)
        finally:
            with self.lock:
                for part in PARTS:
                    result.busy[part] += busy[part]
                    result.cpu[part] += cpu[part]

    def _chain(
        self, url: str, seen: set[str], vectors: list[np.ndarray], busy: dict[str, float], cpu: dict[str, float]
    ) -> str:
        mark, cpu_mark = time.perf_counter(), time.thread_time()

        def lap(part: str) -> None:
            nonlocal mark, cpu_mark
            now, cpu_now = time.perf_counter(), time.thread_time()
            busy[part] += now - mark
            cpu[part] += cpu_now - cpu_mark
            mark, cpu_mark = now, cpu_now

        try:
            answer = self.http.request("GET", url)
        except urllib3.exceptions.HTTPError as error:
            lap("fetch")
            return f"http_error:{type(error).__name__}"
        lap("fetch")
        if answer.status != 200:
            return f"http_{answer.status}"
        data = answer.data
        sha256 = hashlib.sha256(data).hexdigest()
        hashlib.md5(data).hexdigest()  # sum-buddy's manifest column; nothing here needs it but it is paid for
        with self.lock:
            duplicate = sha256 in seen
            seen.add(sha256)
        if duplicate:
            lap("hash")
            return "duplicate"
        with contextlib.suppress(ImageUnreadable):  # featureless or broken: the decode below decides
            phash_bytes(data)
        lap("hash")
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
            image = upright_rgb(image)
        except (OSError, ValueError, SyntaxError) as error:
            lap("decode")
            return f"undecodable:{type(error).__name__}"
        pixels, size = detector_pixels(image, self.detector_side)
        lap("decode")
        boxes, scores = self.detector.run(pixels[None])
        lap("model")
        best = int(scores[0].argmax())
        crop = image.crop(crop_box(boxes[0, best], size, DEFAULT_CROP_PAD)) if scores[0, best] >= THRESHOLD else image
        crop_pixels = clip_pixel_values(crop)
        lap("decode")
        (embedding,) = self.encoder.run(crop_pixels[None])
        vector = embedding[0] / max(float(np.linalg.norm(embedding[0])), 1e-12)
        lap("model")
        with self.lock:
            vectors.append(vector)
        return "indexed"
