"""Parallel S3 calls and staged batch writes without a server, and the reduced-scale decodes the stages use.

ObjectStore's parallel paths are exercised with its `get`/`put` replaced (no S3 here); StagedStore over a
store that logs the calls it gets.
"""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

from taxonstream.core.errors import Transient
from taxonstream.core.settings import CoreSettings
from taxonstream.core.staging import StagedStore
from taxonstream.core.store import ObjectStore, raise_first
from taxonstream.detector.worker import reduced_for
from taxonstream.integrity.phash import hamming, phash_bytes, phash_image
from taxonstream.models.preprocess import detector_pixels
from taxonstream.models.synthetic import shapes_image


def _store(concurrency: int = 4) -> ObjectStore:
    return ObjectStore(CoreSettings(s3_access_key="k", s3_secret_key="s", s3_concurrency=concurrency))


def test_get_many_runs_in_parallel_keeps_order_and_hands_back_each_error() -> None:
    store = _store(concurrency=4)
    together = threading.Barrier(4, timeout=10)  # passes only if all four gets are in flight at once

    def get(key: str) -> bytes:
        together.wait()
        if key == "missing":
            raise KeyError(key)
        if key == "down":
            raise Transient("S3 unavailable")
        return key.encode()

    store.get = get
    found = store.get_many(["a", "missing", "down", "b"])
    assert found[0] == b"a" and found[3] == b"b"
    assert isinstance(found[1], KeyError) and isinstance(found[2], Transient)


def test_put_many_waits_for_every_put_and_raises_a_transient_first() -> None:
    store = _store()
    stored: list[str] = []

    def put(key: str, data: bytes, content_type: str = "") -> None:
        if key == "bad":
            raise ValueError("refused")
        if key == "busy":
            raise Transient("S3 busy")
        stored.append(key)

    store.put = put
    with pytest.raises(Transient):
        store.put_many([("bad", b"", ""), ("a", b"", ""), ("busy", b"", ""), ("b", b"", "")])
    assert sorted(stored) == ["a", "b"], "the others were still stored: nothing is left in flight"
    with pytest.raises(ValueError):
        raise_first([None, ValueError("x"), None])
    raise_first([None, b"fine"])


class LoggingStore:
    """A plain store (no get_many/put_many): StagedStore falls back to one call each."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {"registry/sha256/aa/x.json": b'{"image_id": "x"}'}
        self.calls: list[tuple[str, str]] = []

    def get(self, key: str) -> bytes:
        self.calls.append(("get", key))
        if key not in self.objects:
            raise KeyError(key)
        return self.objects[key]

    def put(self, key: str, data: bytes) -> None:
        self.calls.append(("put", key))
        self.objects[key] = data

    def put_json(self, key: str, value: object) -> None:
        self.put(key, json.dumps(value).encode())

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))


def test_staged_reads_come_from_the_prefetch_and_pending_writes_and_writes_wait_for_the_end() -> None:
    inner = LoggingStore()
    store = StagedStore(inner)
    with store.staged(last=lambda key: key.startswith("registry/")):
        store.prefetch(["registry/sha256/aa/x.json", "registry/sha256/bb/y.json"])
        fetched = len(inner.calls)
        assert store.get_json("registry/sha256/aa/x.json") == {"image_id": "x"}
        assert store.get_json("registry/sha256/bb/y.json") is None, "prefetched as missing"
        store.put_json("registry/sha256/bb/y.json", {"image_id": "y"})
        store.put_json("provenance/y/r1.json", {"record_id": "r1"})
        assert store.get_json("registry/sha256/bb/y.json") == {"image_id": "y"}, "this batch's own write"
        assert len(inner.calls) == fetched, "nothing reached the store inside the block after the prefetch"
        assert store.list("registry/") == ["registry/sha256/aa/x.json"], "anything else passes through"
    writes = [key for call, key in inner.calls if call == "put"]
    assert writes == ["provenance/y/r1.json", "registry/sha256/bb/y.json"], "registry entries last"


def test_a_staged_block_that_raises_writes_nothing_and_other_threads_pass_through() -> None:
    inner = LoggingStore()
    store = StagedStore(inner)
    seen_from_other_thread: list[object] = []
    with pytest.raises(RuntimeError), store.staged():
        store.put_json("rows/r1.json", {"row": 1})
        other = threading.Thread(
            target=lambda: (store.put_json("links/a/b.json", {}), seen_from_other_thread.append(inner.calls[-1]))
        )
        other.start()
        other.join()
        raise RuntimeError("claim crashed")
    assert "rows/r1.json" not in inner.objects, "the batch is retried and writes its rows then"
    assert seen_from_other_thread == [("put", "links/a/b.json")], "another thread's write went straight out"


def _photo(seed: int, size: tuple[int, int]) -> Image.Image:
    image = shapes_image(seed, size=(640, 480), max_shapes=10).resize(size, Image.Resampling.BICUBIC)
    noise = np.random.default_rng(seed).integers(-12, 12, (size[1], size[0], 3))  # sensor-like texture
    return Image.fromarray(np.clip(np.asarray(image).astype(np.int16) + noise, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.mark.parametrize(("seed", "size"), [(0, (400, 300)), (3, (1600, 1200)), (6, (1600, 1200)), (1, (3000, 2000))])
def test_a_draft_decoded_phash_is_within_two_bits_of_the_full_decode(seed: int, size: tuple[int, int]) -> None:
    # phash_bytes decodes JPEGs at >= 256 px (libjpeg scaling). Measured on 36 such images: 0 bits on 34, 2 on
    # two 1600x1200 ones; the near-duplicate radius is 8 bits, unrelated photos ~32 apart.
    data = _jpeg(_photo(seed, size))
    with Image.open(io.BytesIO(data)) as full:
        full.load()
        assert hamming(phash_bytes(data), phash_image(full)) <= 2


def test_the_detector_input_from_a_box_reduced_photo_matches_the_full_one() -> None:
    # 3000x2000: 133 ms -> 16 ms here; differences only at edges (max 0.08 of the [0, 1] range), mean 5e-4.
    photo = _photo(2, (3000, 2000))
    reduced = reduced_for(photo, 256)
    assert reduced.size == (600, 667), "3000/5 and 2000/3 (rounded up): each side at least twice the input size"
    full, small = detector_pixels(photo, 256)[0], detector_pixels(reduced, 256)[0]
    assert float(np.abs(full - small).mean()) < 0.005
    assert float(np.abs(full - small).max()) < 0.15
    tiny = Image.new("RGB", (400, 300))
    assert reduced_for(tiny, 256) is tiny, "an image under twice the input size is left as it is"
