"""200 records through the real stack: every record ends once, duplicates are stored once, search works."""

from __future__ import annotations

import hashlib
from collections import Counter

from pipeline_helpers import closed_port, outcomes, submit, unique_job, wait_done

from taxonstream.core.store import original_key
from taxonstream.v1 import checksummer_pb2, indexer_pb2
from taxonstream.v1.messages_pb2 import Outcome


def test_two_hundred_records_end_indexed_duplicate_or_failed(fetcher, indexer, checksummer, store, site):
    images = site.images(185)
    urls = [site.url("img", image) for image in images]
    metadata = [{"scientificName": f"Species {i % 7}", "row_kind": "unique"} for i in range(185)]
    # Five pairs: the same bytes under a second URL (another provider's mirror, say).
    twins = images[:5]
    urls += [site.url("img", image) + "?mirror=2" for image in twins]
    metadata += [{"row_kind": "twin"} for _ in twins]
    refused = closed_port()
    broken = (
        [(site.url("missing", f"gone-{i}.jpg"), "http_404") for i in range(3)]
        + [(site.url("truncated", image), "truncated") for image in images[5:8]]
        + [(site.url("html", f"denied-{i}.jpg"), "not_an_image") for i in range(2)]
        + [(f"http://127.0.0.1:{refused}/img-{i}.jpg", "connection_error") for i in range(2)]
    )
    urls += [u for u, _ in broken]
    metadata += [{"row_kind": "broken"} for _ in broken]
    job = unique_job("two-hundred")

    assert submit(fetcher, job, urls, metadata).total == 200
    status = wait_done(fetcher, job)

    assert (status.indexed + status.duplicate, status.failed) == (190, 10)
    assert (status.indexed, status.duplicate) == (185, 5)
    by_row = outcomes(fetcher, job)
    assert sorted(by_row) == list(range(200)), "every record has exactly one terminal state"

    # The ten failures, each with its own reason and a message a person can read.
    failed = [by_row[row] for row in range(190, 200)]
    assert [o.state for o in failed] == [Outcome.FAILED] * 10
    assert [o.reason for o in failed] == [reason for _, reason in broken]
    assert all(o.stage == "fetcher" and len(o.message) > 10 for o in failed)
    assert Counter(status.failed_by_reason) == Counter(f"fetcher:{reason}" for _, reason in broken)

    # Each twin pair is one image stored once, with both records linked to it.
    for n, image in enumerate(twins):
        sha = hashlib.sha256(image.read_bytes()).hexdigest()
        first, second = by_row[n], by_row[185 + n]
        states = sorted([first.state, second.state])
        assert states == [Outcome.INDEXED, Outcome.DUPLICATE]
        assert first.image_id == second.image_id == sha
        assert store.exists(original_key(sha))
        found = checksummer.FindDuplicates(checksummer_pb2.FindDuplicatesRequest(sha256=sha), timeout=30)
        assert (found.image_id, sorted(found.record_ids)) == (sha, sorted([first.record_id, second.record_id]))

    # Every indexed image is its own top-1 hit, by stored vector ...
    indexed = [o for o in by_row.values() if o.state == Outcome.INDEXED]
    assert len({o.image_id for o in indexed}) == 185
    for o in indexed:
        hit = indexer.Search(indexer_pb2.SearchRequest(image_id=o.image_id, k=1), timeout=30).hits[0]
        assert hit.image_id == o.image_id
        assert hit.metadata["record_id"] == o.record_id
    # ... and by the image's bytes, through the detector and embedder like an ingested image.
    for image in images[::37]:
        response = indexer.Search(indexer_pb2.SearchRequest(image=image.read_bytes(), k=3), timeout=60)
        assert response.hits[0].image_id == hashlib.sha256(image.read_bytes()).hexdigest()
