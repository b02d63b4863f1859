"""SIGKILL the embedder and the indexer mid-run: after restart nothing is lost and nothing is doubled."""

from __future__ import annotations

import time

from pipeline_helpers import outcomes, submit, unique_job, wait_done, wait_indexed

from taxonstream.v1 import indexer_pb2
from taxonstream.v1.messages_pb2 import Outcome
from tools.stack import local_stack as stack

SPECS = {s.name: s for s in stack.SERVICES}


def test_killed_embedder_and_indexer_lose_nothing_and_duplicate_nothing(fetcher, indexer, site):
    images = site.images(120)
    job = unique_job("crash")
    submit(fetcher, job, [site.url("img", image) for image in images])

    # Let part of the job through, then kill both mid-stream, without any chance to drain.
    wait_indexed(fetcher, job, 20)
    stack.kill_service("embedder")
    stack.kill_service("indexer")
    assert stack.service_pid("embedder") is None and stack.service_pid("indexer") is None
    time.sleep(2)  # records keep flowing into the topics meanwhile
    stack.start_service(SPECS["embedder"])
    stack.start_service(SPECS["indexer"])

    status = wait_done(fetcher, job)
    assert (status.total, status.indexed, status.duplicate, status.failed) == (120, 120, 0, 0)
    by_row = outcomes(fetcher, job)
    assert sorted(by_row) == list(range(120))
    ids = {o.image_id for o in by_row.values() if o.state == Outcome.INDEXED}
    assert len(ids) == 120
    for image_id in ids:
        hits = indexer.Search(indexer_pb2.SearchRequest(image_id=image_id, k=5), timeout=30).hits
        assert hits[0].image_id == image_id
        assert [h.image_id for h in hits].count(image_id) == 1, f"{image_id} is in the index more than once"
