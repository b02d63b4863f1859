"""A job's manifest rows and duplicate groups, through the checksummer's worker over a local store.

Two workers over one store stand in for two replicas of the service (what they share in production is S3;
the `verified` topic between them is played by handing one worker's output messages to the other).
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from taxonstream.checksummer.worker import ChecksummerSettings, ChecksumWorker
from taxonstream.core.bus import Bus
from taxonstream.core.errors import Failed
from taxonstream.core.store import job_records_prefix, original_key
from taxonstream.integrity.jobs import (
    job_duplicates,
    load_rows,
    manifest_bytes,
    row_batches_prefix,
    rows_prefix,
    submitted_record_ids,
)
from taxonstream.integrity.registry import DirectoryStore
from taxonstream.models.synthetic import shapes_image
from taxonstream.v1.messages_pb2 import FetchedImage, Outcome, Record, VerifiedImage


class BucketStore(DirectoryStore):
    bucket = "test-bucket"

    def bucket_for(self, key: str) -> str:
        return self.bucket


def _jpeg(seed: int, quality: int = 90, size: tuple[int, int] = (640, 480)) -> bytes:
    buffer = io.BytesIO()
    shapes_image(seed, size=(640, 480), max_shapes=10).resize(size).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _worker(store: BucketStore) -> ChecksumWorker:
    return ChecksumWorker(ChecksummerSettings(), Bus(ChecksummerSettings()), store)


def _fetched(store: BucketStore, job: str, row: int, data: bytes, **metadata: str) -> FetchedImage:
    sha = hashlib.sha256(data).hexdigest()
    store.put(original_key(sha), data)
    url = f"https://provider{row % 2}.example/media/{row}/photo-{row}.jpg"
    record = Record(record_id=f"{job}:{row}", job_id=job, row=row, url=url, metadata=metadata)
    return FetchedImage(record=record, sha256=sha, object_key=original_key(sha), size_bytes=len(data))


def _keep_submitted(store: BucketStore, job: str, count: int) -> None:
    """What the fetcher keeps of a submitted job (only the record ids matter here)."""
    store.put_json(job_records_prefix(job) + "000000.json", [{"record_id": f"{job}:{n}"} for n in range(count)])


def _csv(data: bytes) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(data.decode()))
    return list(reader.fieldnames or []), list(reader)


def _ingest(tmp_path: Path):
    """A job of five records: an image, the same bytes from another URL, a re-encoded copy, an unrelated image,
    and a record whose expected md5 does not match (it fails and gets no row)."""
    store = BucketStore(tmp_path)
    worker = _worker(store)
    original, other = _jpeg(301), _jpeg(302)
    reencoded = _jpeg(301, quality=60, size=(480, 360))
    job = "job-m"
    messages = [
        _fetched(store, job, 0, original, license="CC BY 4.0"),
        _fetched(store, job, 1, original, **{"dcterms:rights": "CC0"}),
        _fetched(store, job, 2, reencoded),
        _fetched(store, job, 3, other),
        _fetched(store, job, 4, other, md5="0" * 32),
    ]
    _keep_submitted(store, job, len(messages))
    results = []
    for message in messages:
        try:
            results.append(worker.handle(message))
        except Failed as failure:
            results.append(failure)
    return store, worker, job, {"original": original, "other": other, "reencoded": reencoded}, results


def test_the_manifest_has_sum_buddys_columns_first_and_a_row_per_verified_record(tmp_path: Path) -> None:
    store, _, job, images, results = _ingest(tmp_path)
    assert isinstance(results[4], Failed) and results[4].reason == "checksum_mismatch"
    assert store.list(rows_prefix(job)) == [], "rows are stored per batch, not per record"
    assert len(store.list(row_batches_prefix(job))) == 4, "one object per batch (here one record each); none failed"

    data, algorithms = manifest_bytes(load_rows(store, job), "csv")
    header, rows = _csv(data)
    assert header[:5] == ["filepath", "filename", "md5", "sha1", "sha256"] and algorithms == ["md5", "sha1", "sha256"]
    assert data.split(b"\n", 1)[0].endswith(b"\r"), "csv.writer's CRLF, as sum-buddy writes"
    assert [r["record_id"] for r in rows] == [f"{job}:{n}" for n in range(4)]
    expected = [images["original"], images["original"], images["reencoded"], images["other"]]
    for row, content in zip(rows, expected, strict=True):
        for name in ("md5", "sha1", "sha256"):
            assert row[name] == hashlib.new(name, content).hexdigest()
        assert row["filepath"] == f"s3://test-bucket/{original_key(row['sha256'])}" == f"s3://test-bucket/{row['key']}"
        assert row["size_bytes"] == str(len(content))
    sha = hashlib.sha256(images["original"]).hexdigest()
    assert [r["filename"] for r in rows] == [f"photo-{n}.jpg" for n in range(4)]
    assert [r["license"] for r in rows[:2]] == ["CC BY 4.0", "CC0"]
    assert (rows[0]["duplicate_of"], rows[1]["duplicate_of"]) == ("", sha), "the exact copy links to the image"
    assert rows[1]["image_id"] == rows[0]["image_id"] == sha
    assert rows[2]["near_duplicates"].startswith(f"{sha}:"), "the re-encoded copy names the image it resembles"
    assert rows[3]["near_duplicates"] == ""
    assert submitted_record_ids(store, job) == [f"{job}:{n}" for n in range(5)]


def test_parquet_holds_the_same_columns_and_values(tmp_path: Path) -> None:
    store, _, job, _, _ = _ingest(tmp_path)
    rows = load_rows(store, job)
    csv_data, _ = manifest_bytes(rows, "csv")
    parquet_data, _ = manifest_bytes(rows, "parquet")
    table = pq.read_table(io.BytesIO(parquet_data))
    header, csv_rows = _csv(csv_data)
    assert table.column_names == header
    as_text = [{k: "" if v is None else str(v) for k, v in r.items()} for r in table.to_pylist()]
    assert as_text == csv_rows
    with pytest.raises(ValueError):
        manifest_bytes(rows, "xlsx")


def test_a_redelivered_record_rewrites_the_same_row(tmp_path: Path) -> None:
    store, worker, job, images, _ = _ingest(tmp_path)
    before, objects = load_rows(store, job), sorted(store.list(row_batches_prefix(job)))
    contents = [store.get(k) for k in objects]
    again = worker.handle(_fetched(store, job, 1, images["original"], **{"dcterms:rights": "CC0"}))
    assert again[0].message.state == Outcome.DUPLICATE
    assert sorted(store.list(row_batches_prefix(job))) == objects, "the same batch rewrites the same object"
    assert [store.get(k) for k in objects] == contents
    assert load_rows(store, job) == before


def test_duplicate_groups_of_a_job_include_other_jobs_records(tmp_path: Path) -> None:
    store, worker, job, images, _ = _ingest(tmp_path)
    worker.handle(_fetched(store, "job-later", 0, images["original"]))  # the same bytes, another job
    found = job_duplicates(load_rows(store, job), worker.registry)
    sha = hashlib.sha256(images["original"]).hexdigest()
    assert [g.image_id for g in found.exact] == [sha]
    assert [s.record_id for s in found.exact[0].sources] == [f"{job}:0", f"{job}:1", "job-later:0"]
    assert found.contents == 3
    assert len(found.near) == 1
    group = found.near[0]
    near_sha = hashlib.sha256(images["reencoded"]).hexdigest()
    assert {m.sha256 for m in group.members} == {sha, near_sha}
    assert [(a, b) for a, b, _ in group.pairs] == [tuple(sorted((sha, near_sha)))]
    assert all(m.in_job for m in group.members)
    # Seen from the later job, the near copy is another job's member of the group.
    later = job_duplicates(load_rows(store, "job-later"), worker.registry)
    assert [len(g.sources) for g in later.exact] == [3]
    assert [(m.source.record_id, m.in_job) for m in later.near[0].members] == [
        ("job-later:0", True),
        (f"{job}:2", False),
    ]


def test_replicas_learn_each_others_images_from_verified_messages(tmp_path: Path) -> None:
    store = BucketStore(tmp_path)
    first, second = _worker(store), _worker(store)  # two replicas, started before any image arrived
    original = _jpeg(311)
    (emit,) = first.handle(_fetched(store, "job-r", 0, original))
    sha = hashlib.sha256(original).hexdigest()
    assert second.registry.near_images(first.registry.index.get(sha) or 0) == [], "not yet observed"
    for worker in (first, second):  # every replica reads the whole verified topic, its own messages too
        worker.observe(emit.message)
    (later,) = second.handle(_fetched(store, "job-r", 1, _jpeg(311, quality=60, size=(480, 360))))
    assert isinstance(later.message, VerifiedImage)
    assert [n.image_id for n in later.message.near] == [sha], "the second replica links to the first's image"


def test_near_duplicates_claimed_at_once_on_two_replicas_are_linked_once_both_are_observed(tmp_path: Path) -> None:
    store = BucketStore(tmp_path)
    first, second = _worker(store), _worker(store)
    a, b = _jpeg(321), _jpeg(321, quality=60, size=(480, 360))
    (emit_a,) = first.handle(_fetched(store, "job-c", 0, a))
    (emit_b,) = second.handle(_fetched(store, "job-c", 1, b))  # before either saw the other's message
    sha_a, sha_b = hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()
    assert not emit_a.message.near and not emit_b.message.near
    assert first.registry.links(sha_a) == []
    for worker in (first, second):
        for emit in (emit_a, emit_b):
            worker.observe(emit.message)
    for worker in (first, second):  # both replicas know the pair, from memory: no link objects are written
        assert [i for i, _ in worker.registry.links(sha_a)] == [sha_b]
        assert [i for i, _ in worker.registry.links(sha_b)] == [sha_a]
    assert store.list("links/") == []


def test_a_row_gains_the_links_registered_after_it_was_written():
    from taxonstream.integrity.jobs import with_links

    row = {"record_id": "j:2", "image_id": "b", "near_duplicates": [["c", 5]]}
    merged = with_links(row, [("a", 3), ("c", 5), ("b", 0)])
    assert merged["near_duplicates"] == [["a", 3], ["c", 5]]  # nearest first, itself never listed
    assert row["near_duplicates"] == [["c", 5]], "the stored row is not changed"
    assert with_links({"record_id": "j:0", "image_id": "a"}, [])["near_duplicates"] == []
