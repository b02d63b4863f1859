"""Embedding throughput: the embedder service (gRPC -> Triton) against in-process onnxruntime, same model.

    .venv/bin/python -m tools.bench.embed.run [--images 256] [--batch 1 4 16 32] [--concurrency 4]
                                              [--threads 1] [--workers 1] [--repeat 3] [--out results.json]

Needs the local stack up (`taxonstream stack up`; under the integration lock on shared machines). Both
contestants do the same work per image, from JPEG bytes to an L2-normalised vector:

  in process   decode + pybioclip preprocessing + onnxruntime on the ONNX file Triton serves
               (`<repository>/<model>/1/model.onnx`), with the intra-op threads Triton's instance uses
               (`--threads`, the config's intra_op_threads), `--workers` callers, batches of `--batch`
  service      EmbedImages over gRPC with `--batch` images per request from `--concurrency` client threads,
               so Triton's dynamic batcher has requests to group (decode + preprocessing run in the
               embedder process, inference in Triton's Python-backend onnxruntime)

A third column, Triton direct, sends already-preprocessed pixels straight to Triton the way the embedder
does (same batch and concurrency): the service minus the embedder, so the two gaps show where time goes.
For each side it also reads the CPU time every process spent (/proc), as milliseconds of CPU per image:
on a small machine the ratio is decided by how much CPU the service path burns next to in-process.

The runs alternate (in process, Triton direct, service) `--repeat` times and the best of each is kept, so a
burst of load from elsewhere hits all three alike; the load average before and after is printed and saved.
Images are synthetic specimen-like JPEGs (shapes on a background, 640 x 480). The goal is ratio >= 0.8.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime
import tritonclient.grpc as triton

from taxonstream.embedder.worker import l2_normalise, pixel_values
from taxonstream.models.synthetic import shapes_image
from taxonstream.v1 import embedder_pb2, embedder_pb2_grpc
from tools.stack import local_stack as stack

TRITON_GRPC = "127.0.0.1:28001"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _images(count: int) -> list[bytes]:
    out = []
    for seed in range(count):
        buffer = io.BytesIO()
        shapes_image(seed, size=(640, 480)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def _batches(items: list, batch: int) -> list[list]:
    return [items[i : i + batch] for i in range(0, len(items), batch)]


def session(onnx_path: Path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    loaded = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    loaded.run(["embeddings"], {"pixel_values": np.zeros((1, 3, 224, 224), np.float32)})  # warm up
    return loaded


def in_process(session: onnxruntime.InferenceSession, images: list[bytes], batch: int, workers: int) -> float:
    def embed(chunk: list[bytes]) -> int:
        pixels = np.stack([pixel_values(data) for data in chunk])
        return len(l2_normalise(session.run(["embeddings"], {"pixel_values": pixels})[0]))

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:  # onnxruntime's run() is thread-safe; Pillow drops the GIL
        done = sum(pool.map(embed, _batches(images, batch)))
    return done / (time.perf_counter() - started)


def _concurrently(call: Callable[[list], int], chunks: list[list], concurrency: int) -> float:
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, chunks[:concurrency]))  # warm up: connections, one request per thread
        started = time.perf_counter()
        done = sum(pool.map(call, chunks))
    return done / (time.perf_counter() - started)


def triton_direct(model: str, pixels: list[np.ndarray], batch: int, concurrency: int) -> float:
    """Preprocessed pixels to Triton over gRPC, one client per thread, as the embedder sends them."""
    local = threading.local()

    def call(chunk: list[np.ndarray]) -> int:
        if not hasattr(local, "client"):
            local.client = triton.InferenceServerClient(TRITON_GRPC)
        array = np.stack(chunk)
        tensor = triton.InferInput("pixel_values", list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        result = local.client.infer(model, [tensor], outputs=[triton.InferRequestedOutput("embeddings")])
        return len(l2_normalise(result.as_numpy("embeddings")))

    return _concurrently(call, _batches(pixels, batch), concurrency)


def service(address: str, model: str, images: list[bytes], batch: int, concurrency: int) -> float:
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = embedder_pb2_grpc.EmbedderStub(channel)

    def call(chunk: list[bytes]) -> int:
        request = embedder_pb2.EmbedImagesRequest(images=chunk, model=model)  # the model the other columns run
        return len(stub.EmbedImages(request, timeout=300).vectors)

    try:
        return _concurrently(call, _batches(images, batch), concurrency)
    finally:
        channel.close()


def _processes() -> dict[int, str]:
    """The processes a run spends CPU in: this one, the embedder, tritonserver and its Python stubs."""
    found = {os.getpid(): "bench"}
    pid = stack.service_pid("embedder")
    if pid:
        found[pid] = "embedder"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = Path(command[0].decode(errors="replace")).name
        if name == "tritonserver":
            found[int(entry.name)] = "tritonserver"
        elif name == "triton_python_backend_stub":
            found[int(entry.name)] = "triton stubs"
    return found


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _machine_busy() -> float:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICKS  # all but idle and iowait


def measured(run: Callable[[], float], count: int) -> dict:
    """Images/s of one run with the CPU milliseconds per image of each process, and of everything else."""
    processes = _processes()
    before = {pid: _cpu_seconds(pid) for pid in processes}
    busy = _machine_busy()
    rate = run()
    busy = _machine_busy() - busy
    cpu: dict[str, float] = {}
    for pid, name in processes.items():
        cpu[name] = cpu.get(name, 0.0) + (_cpu_seconds(pid) - before[pid]) * 1e3 / count
    cpu["elsewhere"] = max(0.0, busy * 1e3 / count - sum(cpu.values()))
    return {"images_per_s": rate, "cpu_ms_per_image": {k: round(v, 2) for k, v in cpu.items()}}


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--concurrency", type=int, default=4, help="client threads calling the service")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads in process")
    parser.add_argument("--workers", type=int, default=1, help="in-process callers (2: use both cores too)")
    parser.add_argument("--repeat", type=int, default=3)
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
    pixels = [pixel_values(data) for data in images]
    local_session = session(onnx_path, args.threads)
    load_before = _load()
    print(
        f"{args.images} JPEGs 640x480, model {args.model}, in process {args.workers} caller(s) x "
        f"{args.threads} thread(s), service concurrency {args.concurrency}, {os.cpu_count()} cores, "
        f"load {load_before}"
    )
    print(
        f"{'batch':>5}  {'in process':>10}  {'triton direct':>13}  {'service':>7}  {'ratio':>5}   "
        "CPU ms/image: in process | service (bench, embedder, tritonserver, stubs, elsewhere)"
    )
    contestants = {
        "in_process": lambda b: in_process(local_session, images, b, args.workers),
        "triton_direct": lambda b: triton_direct(args.model, pixels, b, args.concurrency),
        "service": lambda b: service(f"127.0.0.1:{port}", args.model, images, b, args.concurrency),
    }
    rows = []
    for batch in args.batch:
        best: dict[str, dict] = {}
        for _ in range(args.repeat):  # alternate, so load from elsewhere hits every side alike
            for name, run in contestants.items():
                result = measured(lambda run=run, batch=batch: run(batch), len(images))
                if name not in best or result["images_per_s"] > best[name]["images_per_s"]:
                    best[name] = result
        rate = {name: result["images_per_s"] for name, result in best.items()}
        ratio = rate["service"] / rate["in_process"]
        rows.append(
            {
                "batch": batch,
                **rate,
                "ratio": ratio,
                "cpu_ms_per_image": {name: result["cpu_ms_per_image"] for name, result in best.items()},
            }
        )
        local_cpu = best["in_process"]["cpu_ms_per_image"]
        served_cpu = best["service"]["cpu_ms_per_image"]
        parts = ", ".join(
            f"{served_cpu.get(k, 0.0):.2f}" for k in ("bench", "embedder", "tritonserver", "triton stubs", "elsewhere")
        )
        print(
            f"{batch:>5}  {rate['in_process']:>10.1f}  {rate['triton_direct']:>13.1f}  {rate['service']:>7.1f}  "
            f"{ratio:>5.2f}   {local_cpu['bench']:.2f} | {parts}",
            flush=True,
        )
    load_after = _load()
    print(f"load average before {load_before}, after {load_after}")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "images": args.images,
                    "threads": args.threads,
                    "workers": args.workers,
                    "concurrency": args.concurrency,
                    "cores": os.cpu_count(),
                    "repeat": args.repeat,
                    "load_before": load_before,
                    "load_after": load_after,
                    "rows": rows,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
