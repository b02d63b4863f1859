"""What the checksummer reads and writes per record: digests carried by the fetcher's message (no original
read back), "seen before?" answered from memory (no registry GET for new bytes), one manifest-row object per
batch (old per-record rows still read), and no link written twice for one pair."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from taxonstream.checksummer.worker import ChecksummerSettings, ChecksumWorker
from taxonstream.core.bus import Bus
from taxonstream.core.errors import Failed
from taxonstream.core.keys import original_key, registry_key
from taxonstream.integrity.checksums import digest_bytes, parse_algorithms
from taxonstream.integrity.jobs import load_rows, manifest_row, row_batches, row_batches_prefix, row_key
from taxonstream.integrity.phash import phash_bytes, to_hex
from taxonstream.integrity.registry import DirectoryStore, DuplicateRegistry
from taxonstream.models.synthetic import shapes_image
from taxonstream.v1.messages_pb2 import FetchedImage, Outcome, Record, VerifiedImage


def _top(key: str) -> str:
    """What a call is about: "registry/sha256" (entries), "registry/snapshot", "links", "originals" …"""
    parts = key.split("/")
    return "/".join(parts[:2]) if parts[0] == "registry" else parts[0]


class CountingStore(DirectoryStore):
    """A local store that counts calls by kind and key prefix, as S3 requests would be."""

    bucket = "test-bucket"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: Counter[tuple[str, str]] = Counter()

    def bucket_for(self, key: str) -> str:
        return self.bucket

    def get(self, key: str) -> bytes:
        self.calls["get", _top(key)] += 1
        return super().get(key)

    def put(self, key: str, data: bytes) -> None:
        self.calls["put", _top(key)] += 1
        super().put(key, data)

    def list(self, prefix: str) -> list[str]:
        self.calls["list", _top(prefix)] += 1
        return super().list(prefix)

    def count(self, kind: str, top: str | None = None) -> int:
        return sum(n for (k, t), n in self.calls.items() if k == kind and (top is None or t == top))


def _jpeg(seed: int, quality: int = 90, size: tuple[int, int] = (640, 480)) -> bytes:
    buffer = io.BytesIO()
    shapes_image(seed, size=(640, 480), max_shapes=10).resize(size).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _flat_jpeg(grey: int) -> bytes:
    """A featureless picture: no pHash, so it is registered in `unhashed`, not in the pHash index."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (grey, grey, grey)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _fetched(store: CountingStore, job: str, row: int, data: bytes, carry: bool = True, **meta: str) -> FetchedImage:
    """A `fetched` message as the fetcher sends it; `carry`: with its digests and pHash (the new fetcher)."""
    sha = hashlib.sha256(data).hexdigest()
    DirectoryStore.put(store, original_key(sha), data)  # stored by the fetcher: not counted
    record = Record(record_id=f"{job}:{row}", job_id=job, row=row, url=f"https://p.example/{row}.jpg", metadata=meta)
    message = FetchedImage(record=record, sha256=sha, object_key=original_key(sha), size_bytes=len(data))
    if carry:
        message.digests.update(digest_bytes(data, parse_algorithms(["md5", "sha1", "sha256"])))
        message.phash = to_hex(phash_bytes(data))
    return message


def _worker(store: CountingStore) -> ChecksumWorker:
    return ChecksumWorker(ChecksummerSettings(), Bus(ChecksummerSettings()), store)


def test_carried_digests_spare_reading_the_original_and_give_the_same_answer(tmp_path: Path) -> None:
    carried_store, read_store = CountingStore(tmp_path / "a"), CountingStore(tmp_path / "b")
    data = _jpeg(401)
    (carried,) = _worker(carried_store).handle(_fetched(carried_store, "j", 0, data))
    (read,) = _worker(read_store).handle(_fetched(read_store, "j", 0, data, carry=False))
    assert carried_store.count("get", "originals") == 0, "the fetcher's digests stand in for the stored bytes"
    assert read_store.count("get", "originals") == 1, "an older message (no digests) reads the original"
    same = ("image_id", "md5", "digests", "phash", "near")
    assert [getattr(carried.message, f) for f in same] == [getattr(read.message, f) for f in same]
    assert load_rows(carried_store, "j") == load_rows(read_store, "j")


def test_carried_digests_are_checked_against_the_expected_ones_and_other_sums_read_the_original(
    tmp_path: Path,
) -> None:
    store = CountingStore(tmp_path)
    worker = _worker(store)
    data = _jpeg(402)
    with pytest.raises(Failed) as failure:
        worker.handle(_fetched(store, "j", 0, data, md5="0" * 32))
    assert failure.value.reason == "checksum_mismatch" and store.count("get", "originals") == 0
    sha512 = hashlib.sha512(data).hexdigest()
    (emit,) = worker.handle(_fetched(store, "j", 1, data, sha512=sha512))  # not carried: read and hashed here
    assert isinstance(emit.message, VerifiedImage) and store.count("get", "originals") == 1
    wrong = _fetched(store, "j", 2, _jpeg(403))
    wrong.digests["sha256"] = "f" * 64
    with pytest.raises(Failed, match="fetched bytes hash to"):
        worker.handle(wrong)


def test_new_bytes_read_no_registry_entry_exact_copies_and_restarts_do(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    worker = _worker(store)
    first, featureless = _jpeg(404), _flat_jpeg(128)
    (emit,) = worker.handle(_fetched(store, "j", 0, first))
    (flat,) = worker.handle(_fetched(store, "j", 1, featureless, carry=False))
    assert store.count("get", "registry/sha256") == 0, "memory knows every registered sha256: new bytes need no GET"
    (copy,) = worker.handle(_fetched(store, "j", 2, first))
    assert store.count("get", "registry/sha256") == 1
    assert copy.message.state == Outcome.DUPLICATE and copy.message.image_id == emit.message.image_id

    # A restart: the snapshot (written with `complete`, `unhashed`) plus the replay of `verified` know both.
    worker.snapshot(force=True)
    restarted = _worker(store)
    assert restarted.registry.complete and flat.message.fetched.sha256 in restarted.registry.unhashed
    before = store.count("get", "registry/sha256")
    (again,) = restarted.handle(_fetched(store, "j", 3, featureless, carry=False))
    assert again.message.state == Outcome.DUPLICATE and store.count("get", "registry/sha256") == before + 1


def test_a_snapshot_from_before_unhashed_was_kept_is_completed_from_a_listing(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    worker = _worker(store)
    featureless = _flat_jpeg(90)
    worker.handle(_fetched(store, "j", 0, featureless, carry=False))
    registry = worker.registry
    registry.unhashed.clear()
    registry.complete = False  # what a snapshot written before this change restores
    registry.save_snapshot()
    assert not DuplicateRegistry(store).complete
    gets = store.count("get", "registry/sha256")
    restarted = _worker(store)  # lists the entries' keys once, reads none of them
    assert restarted.registry.complete and store.count("get", "registry/sha256") == gets
    assert store.count("list", "registry/sha256") >= 1
    (copy,) = restarted.handle(_fetched(store, "j", 1, featureless, carry=False))
    assert copy.message.state == Outcome.DUPLICATE, "the listed entry is found, not claimed again"


def test_a_registry_that_is_neither_restored_nor_rebuilt_reads_every_entry(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    registry = DuplicateRegistry(store)
    assert not registry.complete
    registry.claim("a" * 64, None, {"record_id": "j:0"})
    assert store.calls["get", "registry/sha256"] == 1 and store.get_json(registry_key("a" * 64)) is not None


def test_rows_are_one_object_per_batch_and_old_per_record_rows_are_still_read(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    worker = _worker(store)
    messages = [_fetched(store, "j", n, _jpeg(410 + n)) for n in range(4)]
    results = worker.process(messages)
    assert all(isinstance(r, list) for r in results)
    assert len(store.list(row_batches_prefix("j"))) == 1, "four records, one batch, one row object"
    assert [r["record_id"] for r in load_rows(store, "j")] == [f"j:{n}" for n in range(4)]

    # A row written per record before row batches, and a batch cut differently on redelivery: one row each.
    old = manifest_row(
        bucket="test-bucket",
        object_key="originals/x",
        sha256="b" * 64,
        size_bytes=3,
        record={"record_id": "j:9", "job_id": "j", "row": 9, "url": "https://p.example/9.jpg"},
        digests={"sha256": "b" * 64},
        image_id="b" * 64,
        phash="",
    )
    store.put_json(row_key("j", "j:9"), old)
    worker.process(messages[2:])  # redelivered: records 2 and 3 again, in a batch of their own
    assert len(store.list(row_batches_prefix("j"))) == 2
    rows = load_rows(store, "j")
    assert [r["record_id"] for r in rows] == [*(f"j:{n}" for n in range(4)), "j:9"]
    assert rows[-1] == old


def test_row_batches_split_by_job_and_are_named_by_their_records() -> None:
    rows = [{"record_id": f"{job}:{n}", "job_id": job} for job in ("a", "b") for n in range(2)]
    objects = row_batches(rows)
    assert sorted(len(v["rows"]) for v in objects.values()) == [2, 2]
    assert all(k.startswith(("jobs/a/manifest/row-batches/", "jobs/b/manifest/row-batches/")) for k in objects)
    assert row_batches(list(reversed(rows))).keys() == objects.keys(), "the same records, the same names"


def test_near_duplicates_cost_no_s3_writes_beyond_the_claim(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    worker, other = _worker(store), _worker(store)  # two replicas, started before either image arrived
    a, b = _jpeg(420), _jpeg(420, quality=60, size=(480, 360))
    (emit_a,) = worker.handle(_fetched(store, "j", 0, a))
    puts = store.count("put")
    assert puts > 0
    (emit_b,) = worker.handle(_fetched(store, "j", 1, b))
    assert [n.image_id for n in emit_b.message.near] == [emit_a.message.image_id]
    assert store.count("put") - puts == puts, "the near copy's claim writes what the first image's did"
    for replica in (worker, other):  # every replica reads the whole `verified` topic, its own messages too
        for emit in (emit_a, emit_b):
            replica.observe(emit.message)
        assert [i for i, _ in replica.registry.links(emit_a.message.image_id)] == [emit_b.message.image_id]
    assert store.count("put", "links") == 0 and store.count("put") == 2 * puts
