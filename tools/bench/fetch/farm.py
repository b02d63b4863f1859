"""A farm of image hosts on distinct loopback addresses, each with the manners of a kind of real provider.

Run as a separate process (so it never shares a GIL with the downloader under test):

    python farm.py --config farm.json        # prints one JSON line {"ready": true, ...} once listening

farm.json: {"port": 18080, "control": "127.0.0.2", "images": "DIR", "hosts": [HostSpec, ...]}
A HostSpec is {"name", "address", "manner", ...parameters}; manners:
  unlimited   answers at once, as fast as it can
  ratelimited token bucket of `rate` per second and `burst`; over it: 429 (with Retry-After when `retry_after`)
  slow        answers after `latency` seconds
  flaky       503 with probability `p503`, and for `burst_s` seconds out of every `period_s` (overload bursts)
  broken      serves its image paths normally; junk paths (/junk/<kind>/...) answer junk of that kind
Images are served at /img/<file name> from the images directory (read into memory at start).
The control address answers GET /_stats (per-host counters as JSON) and GET /_reset (zero counters, refill buckets).
Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REASONS = {200: "OK", 404: "Not Found", 410: "Gone", 429: "Too Many Requests", 503: "Service Unavailable"}
JUNK_KINDS = ("404", "410", "html", "json", "truncated", "empty", "drop")


@dataclass
class Host:
    name: str
    address: str
    manner: str
    rate: float = 0.0
    burst: float = 1.0
    retry_after: bool = False
    latency: float = 0.0
    p503: float = 0.0
    burst_s: float = 0.0
    period_s: float = 0.0
    tokens: float = 0.0
    last: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    stats: Counter = field(default_factory=Counter)
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def reset(self) -> None:
        self.tokens, self.last, self.started = self.burst, time.monotonic(), time.monotonic()
        self.stats = Counter()
        self.rng = random.Random(7)

    def admit(self) -> tuple[int, dict[str, str]]:
        """The status this host's manners give the next request (200 = serve it)."""
        now = time.monotonic()
        if self.manner == "ratelimited":
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens < 1.0:
                headers = {}
                if self.retry_after:
                    headers["Retry-After"] = str(max(1, math.ceil((1.0 - self.tokens) / self.rate)))
                return 429, headers
            self.tokens -= 1.0
        elif self.manner == "flaky":
            in_burst = self.period_s > 0 and (now - self.started) % self.period_s < self.burst_s
            if in_burst or self.rng.random() < self.p503:
                return 503, {}
        return 200, {}


class Farm:
    def __init__(self, images: dict[str, bytes], hosts: list[Host]) -> None:
        self.images = images
        self.hosts = hosts
        for host in hosts:
            host.reset()

    def respond(self, host: Host, path: str) -> tuple[int, dict[str, str], bytes, int | None]:
        """(status, headers, body, declared length when it differs from the body's)."""
        host.stats["requests"] += 1
        host.stats.setdefault("first_ms", round(1000 * (time.monotonic() - host.started)))  # the tool's start-up
        status, headers = host.admit()
        if status != 200:
            host.stats[str(status)] += 1
            return status, headers, b"", None
        body = b""
        if path.startswith("/img/") and path[5:] in self.images:
            body = self.images[path[5:]]
        elif path.startswith("/junk/"):
            kind, _, name = path[6:].partition("/")
            image = self.images.get(name, b"")
            host.stats[f"junk_{kind}"] += 1
            if kind in ("404", "410"):
                host.stats[kind] += 1
                return int(kind), {}, b"", None
            headers = {"Content-Type": "image/jpeg"}
            if kind == "html":
                return 200, headers, b"<!DOCTYPE html><html><body><h1>Access denied</h1></body></html>", None
            if kind == "json":
                return 200, headers, b'{"error": "image not available"}', None
            if kind == "truncated":
                return 200, headers, image[: len(image) // 2], None
            if kind == "empty":
                return 200, headers, b"", None
            if kind == "drop":
                return 200, headers, image[: len(image) // 3], len(image)
        else:
            host.stats["404"] += 1
            return 404, {}, b"", None
        host.stats["200"] += 1
        host.stats["bytes"] += len(body)
        host.stats["last_200_ms"] = round(1000 * (time.monotonic() - host.started))  # when its last image left
        return 200, {"Content-Type": "image/jpeg"}, body, None


class Connection(asyncio.Protocol):
    """Minimal HTTP/1.1 (GET only, keep-alive, no pipelining needed by any client here)."""

    def __init__(self, farm: Farm, host: Host | None, control: bool) -> None:
        self.farm, self.host, self.control = farm, host, control
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            self.request(head)
        if len(self.buffer) > 65536:
            self.transport.close()

    def request(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        path = parts[1].split("?")[0] if len(parts) > 1 else "/"
        close = any(line.lower().replace(" ", "") == "connection:close" for line in lines[1:])
        if self.control:
            self.answer_control(path, close)
            return
        status, headers, body, declared = self.farm.respond(self.host, path)
        delay = self.host.latency if self.host.manner == "slow" else 0.0
        if delay:
            asyncio.get_running_loop().call_later(delay, self.send, status, headers, body, declared, close)
        else:
            self.send(status, headers, body, declared, close)

    def answer_control(self, path: str, close: bool) -> None:
        if path == "/_reset":
            for host in self.farm.hosts:
                host.reset()
            body = b"{}"
        else:
            body = json.dumps({h.name: dict(h.stats) for h in self.farm.hosts}).encode()
        self.send(200, {"Content-Type": "application/json"}, body, None, close)

    def send(self, status: int, headers: dict[str, str], body: bytes, declared: int | None, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {declared if declared is not None else len(body)}")
        if close or declared is not None:
            lines.append("Connection: close")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        if close or declared is not None:
            self.transport.close()


def load_hosts(config: dict) -> list[Host]:
    hosts = []
    for spec in config["hosts"]:
        if not ipaddress.ip_address(spec["address"]).is_loopback:
            raise SystemExit(f"farm hosts must be loopback addresses, not {spec['address']}")
        hosts.append(Host(**spec))
    return hosts


async def main(config: dict) -> None:
    images = {p.name: p.read_bytes() for p in Path(config["images"]).iterdir() if p.is_file()}
    hosts = load_hosts(config)
    farm = Farm(images, hosts)
    loop = asyncio.get_running_loop()
    port = config["port"]
    servers = [
        await loop.create_server(lambda h=h: Connection(farm, h, False), h.address, port, backlog=1024) for h in hosts
    ]
    control = config.get("control", "127.0.0.2")
    servers.append(await loop.create_server(lambda: Connection(farm, None, True), control, port))
    print(json.dumps({"ready": True, "port": port, "images": len(images)}), flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="farm.json")
    args = parser.parse_args()
    try:
        asyncio.run(main(json.loads(Path(args.config).read_text())))
    except KeyboardInterrupt:
        sys.exit(0)
