"""The real local stack (Kafka, Ceph S3, Triton, the five services), started once per session.

The fixture reuses `taxonstream stack up`, the same code path as `make demo`; it stops the stack at
the end only if it started it. Loopback is allow-listed for the fetcher: the test sites run here.
"""

from __future__ import annotations

import functools
import http.server
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest

from taxonstream.core.bus import Bus
from taxonstream.core.settings import CoreSettings
from taxonstream.core.store import ObjectStore
from taxonstream.v1 import (
    checksummer_pb2_grpc,
    detector_pb2_grpc,
    embedder_pb2_grpc,
    fetcher_pb2_grpc,
    indexer_pb2_grpc,
)
from tools.demo.sample import make_images, serve
from tools.stack import local_stack as stack


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def local_stack() -> Iterator[None]:
    _, was_up = stack.status()
    # The indexer adds land cover from a small synthetic CDL (test_landcover_ingest.py) to records with coordinates.
    import landcover_raster

    raster = landcover_raster.write(stack.stack_dir() / "landcover" / "test_cdl.tif")
    os.environ.setdefault("TAXONSTREAM_LANDCOVER_RASTER", str(raster))
    stack.up(allow_networks=["127.0.0.0/8"], echo=lambda line: print(line, flush=True))
    yield
    if not was_up:
        stack.down(echo=lambda line: print(line, flush=True))


@pytest.fixture(scope="session")
def settings(local_stack) -> CoreSettings:
    s3 = {k.removeprefix("TAXONSTREAM_").lower(): v for k, v in stack.s3_env().items()}
    return CoreSettings(**s3)


@pytest.fixture(scope="session")
def bus(settings) -> Bus:
    return Bus(settings)


@pytest.fixture(scope="session")
def store(settings) -> ObjectStore:
    return ObjectStore(settings)


def _stub_fixture(service: str, stub_type: type):
    @pytest.fixture(scope="session", name=service)
    def stub(local_stack):
        """A stub of the stack's own replica of this service (answers up to 64 MiB: crops)."""
        port = next(s.grpc_port for s in stack.SERVICES if s.name == service)
        options = [("grpc.max_receive_message_length", 64 << 20)]
        return stub_type(grpc.insecure_channel(f"127.0.0.1:{port}", options=options))

    return stub


fetcher = _stub_fixture("fetcher", fetcher_pb2_grpc.FetcherStub)
indexer = _stub_fixture("indexer", indexer_pb2_grpc.IndexerStub)
checksummer = _stub_fixture("checksummer", checksummer_pb2_grpc.ChecksummerStub)
detector = _stub_fixture("detector", detector_pb2_grpc.DetectorStub)
embedder = _stub_fixture("embedder", embedder_pb2_grpc.EmbedderStub)


class SiteHandler(http.server.SimpleHTTPRequestHandler):
    """Serves images under /img/, and the broken answers real providers give under other paths."""

    requests: Counter[str] = Counter()  # path -> times asked, so tests can see what was (not) fetched
    gone: set[str] = set()  # /toggle/<name> answers 404 while the name is in here
    # /limited/ allows LIMIT requests per second (all names together), then 429 with Retry-After: 1.
    LIMIT = 4
    limited_log: list[float] = []
    limited_lock = threading.Lock()

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):  # noqa: N802 - the base class's name
        path = urlsplit(self.path).path
        SiteHandler.requests[path] += 1
        kind, _, name = path.strip("/").partition("/")
        file = Path(self.directory) / name
        if path == "/robots.txt":
            return self._send(200, b"User-agent: *\nDisallow: /private/\n", "text/plain")
        if kind == "private" and file.is_file():
            return self._send(200, file.read_bytes(), "image/jpeg")
        if kind == "limited" and file.is_file():
            with SiteHandler.limited_lock:
                now = time.monotonic()
                recent = [t for t in SiteHandler.limited_log if now - t < 1.0]
                SiteHandler.limited_log[:] = recent
                if len(recent) >= SiteHandler.LIMIT:
                    SiteHandler.requests["429"] += 1
                    self.send_response(429)
                    self.send_header("Retry-After", "1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                SiteHandler.limited_log.append(now)
            return self._send(200, file.read_bytes(), "image/jpeg")
        if kind == "toggle":
            if name in SiteHandler.gone or not file.is_file():
                return self._send(404, b"not found", "text/plain")
            return self._send(200, file.read_bytes(), "image/jpeg")
        if kind == "img" and file.is_file():
            return self._send(200, file.read_bytes(), "image/jpeg")
        if kind == "truncated" and file.is_file():
            data = file.read_bytes()
            return self._send(200, data[: len(data) // 2], "image/jpeg")
        if kind == "slow" and file.is_file():
            time.sleep(1.0)  # a provider that takes its time, so a job can be cancelled mid-way
            return self._send(200, file.read_bytes(), "image/jpeg")
        if kind == "html":
            return self._send(200, b"<!DOCTYPE html><html><body><h1>Access denied</h1></body></html>", "image/jpeg")
        return self._send(404, b"not found", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Site:
    requests = SiteHandler.requests
    gone = SiteHandler.gone

    def __init__(self, directory: Path, base_url: str) -> None:
        self.directory = directory
        self.base_url = base_url

    def images(self, count: int) -> list[Path]:
        """`count` new images, unique to this run (a random seed), so earlier runs' data never collide."""
        seed = random.SystemRandom().randrange(1, 2**31)
        return make_images(self.directory / f"set-{seed}", count, seed=seed)

    def hashable_images(self, count: int) -> list[Path]:
        """`count` new images with a perceptual hash: a few random ones are featureless at pHash's scale
        (shapes differing only in hue), and those take part in exact duplicates only."""
        from taxonstream.integrity.phash import FlatImage, phash_bytes

        found: list[Path] = []
        while len(found) < count:
            for image in self.images(count):
                try:
                    phash_bytes(image.read_bytes())
                except FlatImage:
                    continue
                found.append(image)
        return found[:count]

    def url(self, kind: str, image: Path | str) -> str:
        name = image.relative_to(self.directory).as_posix() if isinstance(image, Path) else image
        return f"{self.base_url}/{kind}/{name}"


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("site")
    with serve(directory, functools.partial(SiteHandler, directory=str(directory))) as base_url:
        yield Site(directory, base_url)
