"""Search as users touch it: taxonomy filters inside the search, text queries, thumbnails, stats, delete."""

from __future__ import annotations

import io
import time

import httpx
from PIL import Image
from pipeline_helpers import outcomes, submit, unique_job, wait_done

from taxonstream.cli.main import main as taxonstream
from taxonstream.v1 import indexer_pb2
from taxonstream.v1.messages_pb2 import Outcome
from tools.stack import local_stack as stack

INDEXER = next(s for s in stack.SERVICES if s.name == "indexer")


def search(indexer, genus: str, k: int = 50, **query) -> list[indexer_pb2.Hit]:
    request = indexer_pb2.SearchRequest(k=k, filters=[indexer_pb2.Filter(field="genus", values=[genus])], **query)
    return list(indexer.Search(request, timeout=60).hits)


def test_filters_text_thumbnails_stats_and_delete(fetcher, indexer, site, capsys):
    tag = unique_job("g").replace("-", "")
    genus_a, genus_b = f"Apis{tag}", f"Bombus{tag}"
    images = site.images(12)
    metadata = [{"genus": genus_a if i % 2 == 0 else genus_b, "license": "CC0-1.0"} for i in range(12)]
    job = unique_job("search")
    submit(fetcher, job, [site.url("img", p) for p in images], metadata)
    assert wait_done(fetcher, job, timeout=300).indexed == 12
    ids = {row: o.image_id for row, o in outcomes(fetcher, job).items() if o.state == Outcome.INDEXED}
    apis = {ids[row] for row in range(0, 12, 2)}

    # The filter is applied inside the search: k is filled from matching images only.
    hits = search(indexer, genus_a, image_id=ids[1])  # query with a Bombus image, ask for Apis
    assert {h.image_id for h in hits} == apis
    assert all(h.metadata["genus"] == genus_a for h in hits)
    text_hits = search(indexer, genus_b, k=3, text=f"a photo of {genus_b}")
    assert len(text_hits) == 3 and all(h.metadata["genus"] == genus_b for h in text_hits)

    stats = indexer.Stats(indexer_pb2.StatsRequest(), timeout=30)
    assert stats.by_field["genus"].counts[genus_a] == 6 and stats.kind == "flat"

    # The same through the command line.
    assert taxonstream(["search", "--id", ids[1], "--filter", f"genus={genus_a}", "-k", "50", "--thumbnails"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("6 hits") and printed.count("http://127.0.0.1:27480/") == 6
    assert taxonstream(["stats", "--top", "1000"]) == 0
    assert f"{genus_a} 6" in capsys.readouterr().out

    thumbnail = httpx.get(hits[0].thumbnail_url, timeout=30)
    assert thumbnail.status_code == 200
    assert min(Image.open(io.BytesIO(thumbnail.content)).size) <= 256

    removed = sorted(apis)[:2]
    assert indexer.Delete(indexer_pb2.DeleteRequest(image_ids=removed), timeout=30).requested == 2
    deadline = time.monotonic() + 60
    while {h.image_id for h in search(indexer, genus_a, image_id=ids[1])} != apis - set(removed):
        assert time.monotonic() < deadline, "the deletes never reached the index"
        time.sleep(0.3)

    # A killed indexer rebuilds from its snapshot plus the topic: the deletes stay deleted.
    stack.kill_service("indexer")
    stack.start_service(INDEXER)
    deadline = time.monotonic() + 120
    while {h.image_id for h in search(indexer, genus_a, image_id=ids[1])} != apis - set(removed):
        assert time.monotonic() < deadline, "after a restart the index does not answer as before"
        time.sleep(0.5)

    listed = {h.image_id for h in indexer.ListImages(indexer_pb2.ListImagesRequest(job_id=job), timeout=60)}
    assert listed == set(ids.values()) - set(removed)
    request = indexer_pb2.ListImagesRequest(job_id=job, filters=[indexer_pb2.Filter(field="genus", values=[genus_a])])
    assert {h.image_id for h in indexer.ListImages(request, timeout=60)} == apis - set(removed)
