"""Embedding throughput: the embedder service (gRPC -> Triton) against in-process onnxruntime, same model.

    .venv/bin/python tools/bench/embed/run.py [--images 256] [--batch 1 4 16 32] [--concurrency 4]
                                              [--threads 1] [--out results.json]

Needs the local stack up (`taxonstream stack up`; under the integration lock on shared machines). Both
contestants do the same work per image, from JPEG bytes to an L2-normalised vector:

  in process   decode + pybioclip preprocessing + onnxruntime on the ONNX file Triton serves
               (`<repository>/<model>/1/model.onnx`), with the intra-op threads Triton's instance uses
               (`--threads`, the config's intra_op_threads), one caller, batches of `--batch`
  service      EmbedImages over gRPC with `--batch` images per request from `--concurrency` client threads,
               so Triton's dynamic batcher has requests to group (decode + preprocessing run in the
               embedder process, inference in Triton's Python-backend onnxruntime)

For each batch size it prints images/s of both and the ratio service / in process (the goal is >= 0.8).
Images are synthetic specimen-like JPEGs (shapes on a background, 640 x 480). Best of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime

from taxonstream.cli import stack
from taxonstream.embedder.service import l2_normalise, pixel_values
from taxonstream.models.synthetic import shapes_image
from taxonstream.v1 import embedder_pb2, embedder_pb2_grpc


def _images(count: int) -> list[bytes]:
    out = []
    for seed in range(count):
        buffer = io.BytesIO()
        shapes_image(seed, size=(640, 480)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def in_process(onnx_path: Path, images: list[bytes], batch: int, threads: int) -> float:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    session.run(["embeddings"], {"pixel_values": np.zeros((1, 3, 224, 224), np.float32)})  # warm up
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        pixels = np.stack([pixel_values(data) for data in images[start:start + batch]])
        l2_normalise(session.run(["embeddings"], {"pixel_values": pixels})[0])
    return len(images) / (time.perf_counter() - started)


def service(address: str, images: list[bytes], batch: int, concurrency: int) -> float:
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = embedder_pb2_grpc.EmbedderStub(channel)
    requests = [embedder_pb2.EmbedImagesRequest(images=images[i:i + batch]) for i in range(0, len(images), batch)]
    stub.EmbedImages(requests[0], timeout=120)  # warm up (connection, model)

    def call(request: embedder_pb2.EmbedImagesRequest) -> int:
        return len(stub.EmbedImages(request, timeout=300).vectors)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = sum(pool.map(call, requests))
    elapsed = time.perf_counter() - started
    channel.close()
    assert done == len(images)
    return done / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads in process")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model", default="clip_standin_image")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = parser.parse_args()

    onnx_path = stack.model_repository() / args.model / "1" / "model.onnx"
    if not onnx_path.is_file():
        sys.exit(f"{onnx_path} missing: start the stack first (taxonstream stack up)")
    port = next(s.grpc_port for s in stack.SERVICES if s.name == "embedder")
    if not stack.healthy(port):
        sys.exit("the embedder is not serving: start the stack first (taxonstream stack up)")
    images = _images(args.images)
    rows = []
    print(f"{args.images} JPEGs 640x480, model {args.model}, in-process threads {args.threads}, "
          f"service concurrency {args.concurrency}")
    print(f"{'batch':>5}  {'in process img/s':>16}  {'service img/s':>13}  {'ratio':>5}")
    for batch in args.batch:
        local = max(in_process(onnx_path, images, batch, args.threads) for _ in range(args.repeat))
        served = max(service(f"127.0.0.1:{port}", images, batch, args.concurrency) for _ in range(args.repeat))
        rows.append({"batch": batch, "in_process": local, "service": served, "ratio": served / local})
        print(f"{batch:>5}  {local:>16.1f}  {served:>13.1f}  {served / local:>5.2f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"images": args.images, "threads": args.threads,
                                        "concurrency": args.concurrency, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
