"""A generated sample collection served on loopback: what `make demo` ingests, and tests build on.

The images are drawn by the stand-in generator (coloured shapes), each with made-up taxonomy columns,
so nothing needs the network. Clearly synthetic; the pipeline treats them like any provider's.
"""

from __future__ import annotations

import csv
import functools
import http.server
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from taxonstream.models.synthetic import shapes_image

GENERA = [
    ("Danaus", "plexippus", "Nymphalidae"),
    ("Papilio", "machaon", "Papilionidae"),
    ("Pieris", "rapae", "Pieridae"),
    ("Bombus", "terrestris", "Apidae"),
    ("Carabus", "nemoralis", "Carabidae"),
    ("Coccinella", "septempunctata", "Coccinellidae"),
]


def make_images(directory: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` distinct JPEGs named img-0000.jpg …; the same seed gives the same bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = directory / f"img-{i:04d}.jpg"
        if not path.exists():
            shapes_image(seed * 100_003 + i).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def write_url_list(path: Path, base_url: str, images: list[Path]) -> Path:
    """A CSV like a small provider export: url, taxonomy, licence."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "scientificName", "genus", "family", "license", "provider"])
        for i, image in enumerate(images):
            genus, epithet, family = GENERA[i % len(GENERA)]
            writer.writerow([f"{base_url}/{image.name}", f"{genus} {epithet}", genus, family, "CC0-1.0", "sample"])
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@contextmanager
def serve(
    directory: Path | None, handler: Callable[..., http.server.BaseHTTPRequestHandler] | None = None
) -> Iterator[str]:
    """Serve `directory` (or answer with `handler`) on 127.0.0.1, a free port; yields the base URL."""
    handler = handler or functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
