"""The image sites: the fetch benchmark's loopback host farm (tools/bench/fetch/farm.py), every host unlimited.

The farm runs as its own process, so serving never shares a GIL with the glued chain under test. Each host
is a distinct 127.0.x.y address (all of 127.0.0.0/8 is loopback on Linux), so the fetcher's records,
keyed by host, spread over partitions as a real URL list's would. The addresses (127.0.2.x) and the port
(a free one, picked at start) keep clear of the fetch benchmark's 127.0.0.x farm and of the stack.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FARM = Path(__file__).resolve().parents[1] / "fetch" / "farm.py"
ORIGIN_HOSTS = [f"127.0.2.{10 + i}" for i in range(8)]  # the 2,000 distinct images
MIRROR_HOSTS = ["127.0.2.30", "127.0.2.31"]  # the exact duplicates: same bytes, another host
CONTROL = "127.0.2.2"  # the farm's /_stats address


def free_port(address: str = ORIGIN_HOSTS[0]) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


@contextmanager
def serving(images: Path, port: int) -> Iterator[dict]:
    """The farm serving `images` on every host at `port` until the block ends; yields its config."""
    hosts = [{"name": f"origin-{i}", "address": a, "manner": "unlimited"} for i, a in enumerate(ORIGIN_HOSTS)]
    hosts += [{"name": f"mirror-{i}", "address": a, "manner": "unlimited"} for i, a in enumerate(MIRROR_HOSTS)]
    config = {"port": port, "control": CONTROL, "images": str(images), "hosts": hosts}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config, handle)
    process = subprocess.Popen([sys.executable, str(FARM), "--config", handle.name], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""  # one JSON line once it listens
        if '"ready": true' not in line:
            raise RuntimeError(f"the image farm did not start (exit {process.poll()}): {line.strip()!r}")
        yield config
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        Path(handle.name).unlink(missing_ok=True)


def stats(config: dict) -> dict:
    """Per-host request counters the farm kept (requests, 200, 404, bytes)."""
    with urllib.request.urlopen(f"http://{config['control']}:{config['port']}/_stats", timeout=10) as answer:
        return json.loads(answer.read())


def reset(config: dict) -> None:
    with urllib.request.urlopen(f"http://{config['control']}:{config['port']}/_reset", timeout=10):
        pass
