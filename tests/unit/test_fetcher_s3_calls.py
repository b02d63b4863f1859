"""The fetcher's S3 calls per record and the digests it carries: a new URL costs the URL entry's GET (a 404),
the original's PUT (no HEAD before it: content-addressed, idempotent) and the URL entry's PUT, written after
the original; a URL fetched before costs one GET; the message carries md5, sha1, sha256 and the pHash."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from typing import Any

import pytest

from taxonstream.core.bus import Bus
from taxonstream.core.keys import original_key
from taxonstream.core.store import ObjectStore
from taxonstream.fetcher.worker import FetchWorker, url_key
from taxonstream.fetching.settings import FetcherSettings
from taxonstream.integrity.phash import phash_bytes, to_hex
from taxonstream.models.synthetic import shapes_image
from taxonstream.v1.messages_pb2 import Record


class MemoryStore:
    """Objects in a dict; every call logged in order as (call, key), as S3 requests would be."""

    bucket = "test-bucket"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.log: list[tuple[str, str]] = []

    def get_json(self, key: str) -> Any | None:
        self.log.append(("get", key))
        return json.loads(self.objects[key]) if key in self.objects else None

    def put_json(self, key: str, value: Any) -> None:
        self.put(key, json.dumps(value).encode())

    def put(self, key: str, data: bytes, content_type: str = "") -> None:
        self.log.append(("put", key))
        self.objects[key] = data

    def exists(self, key: str) -> bool:
        self.log.append(("head", key))
        return key in self.objects

    # The real store's code (a HEAD, then a PUT when missing) on this class's logged exists and put.
    put_original = ObjectStore.put_original

    def calls(self) -> Counter[str]:
        return Counter(call for call, _ in self.log)


class NoJobs:
    def job(self, job_id: str) -> None:
        return None


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    shapes_image(seed, size=(400, 300), max_shapes=8).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


@pytest.fixture
def fetch(monkeypatch: pytest.MonkeyPatch):
    settings = FetcherSettings()
    store = MemoryStore()
    worker = FetchWorker(settings, Bus(settings), store, NoJobs())  # type: ignore[arg-type]
    served: dict[str, bytes] = {}
    downloads: list[str] = []

    def download(url: str, *args: Any, **kwargs: Any) -> tuple[bytes, int]:
        downloads.append(url)
        return served[url], 1

    monkeypatch.setattr(worker.hosts, "download", download)
    return worker, store, served, downloads


def _record(url: str, row: int = 0, force: bool = False) -> Record:
    return Record(record_id=f"j:{row}", job_id="j", row=row, url=url, force=force)


def test_a_new_url_costs_a_get_and_two_puts_original_first_and_carries_every_digest(fetch) -> None:
    worker, store, served, _ = fetch
    data = served["https://h.example/a.jpg"] = _jpeg(501)
    (emit,) = worker.handle(_record("https://h.example/a.jpg"))
    sha = hashlib.sha256(data).hexdigest()
    assert store.log == [
        ("get", url_key("https://h.example/a.jpg")),  # a 404: never fetched
        ("put", original_key(sha)),  # no HEAD before it
        ("put", url_key("https://h.example/a.jpg")),  # after the original, so the entry implies it
    ]
    message = emit.message
    assert dict(message.digests) == {n: hashlib.new(n, data).hexdigest() for n in ("md5", "sha1", "sha256")}
    assert message.sha256 == sha and message.HasField("phash") and message.phash == to_hex(phash_bytes(data))


def test_a_url_fetched_before_costs_one_get_and_carries_the_stored_digests(fetch) -> None:
    worker, store, served, downloads = fetch
    served["https://h.example/b.jpg"] = _jpeg(502)
    (first,) = worker.handle(_record("https://h.example/b.jpg"))
    store.log.clear()
    (again,) = worker.handle(_record("https://h.example/b.jpg", row=1))
    assert store.log == [("get", url_key("https://h.example/b.jpg"))] and len(downloads) == 1
    assert again.message.attempts == 0 and again.message.record.record_id == "j:1"
    assert dict(again.message.digests) == dict(first.message.digests) and again.message.phash == first.message.phash


def test_an_entry_from_before_digests_is_trusted_only_with_its_original(fetch) -> None:
    worker, store, served, downloads = fetch
    data = served["https://h.example/c.jpg"] = _jpeg(503)
    sha = hashlib.sha256(data).hexdigest()
    old = {"sha256": sha, "size": len(data), "mime": "image/jpeg", "width": 400, "height": 300}
    store.put_json(url_key("https://h.example/c.jpg"), old)  # its original was never stored
    store.log.clear()
    (emit,) = worker.handle(_record("https://h.example/c.jpg"))
    assert store.log[:2] == [("get", url_key("https://h.example/c.jpg")), ("head", original_key(sha))]
    assert downloads == ["https://h.example/c.jpg"], "downloaded again: the old entry named no stored original"
    assert emit.message.attempts == 1 and original_key(sha) in store.objects
    store.log.clear()
    store.put_json(url_key("https://h.example/c.jpg"), old)  # now the original is there
    (known,) = worker.handle(_record("https://h.example/c.jpg", row=1))
    assert store.calls() == Counter({"put": 1, "get": 1, "head": 1}) and known.message.attempts == 0
    assert not known.message.digests and not known.message.HasField("phash"), "the checksummer reads the original"


def test_a_small_original_rides_in_its_message_and_a_large_one_only_in_s3(fetch) -> None:
    worker, store, served, _ = fetch
    small = served["https://h.example/d.jpg"] = _jpeg(504)
    (carried,) = worker.handle(_record("https://h.example/d.jpg"))
    assert carried.message.data == small == store.objects[original_key(hashlib.sha256(small).hexdigest())]
    worker.settings = worker.settings.model_copy(update={"fetch_inline_max_bytes": len(small) - 1})
    served["https://h.example/e.jpg"] = small
    (stored_only,) = worker.handle(_record("https://h.example/e.jpg", force=True))
    assert stored_only.message.data == b"" and stored_only.message.sha256 == carried.message.sha256
    # A URL fetched before carries nothing either: its bytes are not in memory, and S3 has them.
    (known,) = worker.handle(_record("https://h.example/d.jpg", row=1))
    assert known.message.attempts == 0 and known.message.data == b""
