"""SIGKILL the indexer and the embedder with work in flight: after restart every record ends exactly once.

"In flight" is measured, not hoped for: the end offsets of each killed stage's input topic are read just
before its kill, and what the dead process had made durable is read after it (a killed process commits
nothing more): the embedder's group commits in Kafka, the indexer's latest snapshot in S3. The difference
is work the restarted stage had to redo.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from pipeline_helpers import (
    assert_each_record_ended_once,
    outcomes,
    snapshot_key,
    submit,
    terminal_outcomes,
    uncommitted,
    unique_job,
    unsnapshotted,
    wait_done,
    wait_indexed,
    wait_until,
)

from taxonstream.core.bus import Bus
from taxonstream.v1 import indexer_pb2
from taxonstream.v1.messages_pb2 import Outcome
from tools.stack import local_stack as stack

SPECS = {s.name: s for s in stack.SERVICES}
IMAGES = 120


def kill_with_work_pending(bus: Bus, name: str, topic: str, pending: Callable[[dict], int]) -> int:
    """Freeze `name` (SIGSTOP) once `pending(end offsets of topic)` > 0, measure again while it can make
    nothing more durable, SIGKILL it, and return how much of what was on `topic` it had not made durable.

    Measuring a running process and then killing it races its next commit (CI saw 0 that way); a frozen
    one is measured as it dies. Where the frozen process had caught up after all, it runs on and we wait
    for the next backlog."""
    pid = stack.service_pid(name)
    assert pid is not None, f"the {name} is not running"
    deadline = time.monotonic() + 120
    while True:
        wait_until(lambda: pending(bus.end_offsets(topic)) > 0, f"the {name} with work pending")
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.2)  # a commit or snapshot already on the wire lands before the measurement
        lost = pending(bus.end_offsets(topic))
        if lost > 0:
            break
        os.kill(pid, signal.SIGCONT)
        assert time.monotonic() < deadline, f"the {name} caught up every time it was frozen, for 120 s"
    stack.kill_service(name)
    assert stack.service_pid(name) is None
    return lost


def test_killed_indexer_and_embedder_with_work_in_flight_end_every_record_exactly_once(
    fetcher, indexer, bus, store, site
):
    topics = bus.topics
    embedder_group = topics.name("embedder")  # the group of the embedder's StreamWorker (core/worker.py)
    outcomes_start = bus.end_offsets(topics.outcomes)
    job = unique_job("crash")
    submit(fetcher, job, [site.url("img", image) for image in site.images(IMAGES)])
    wait_indexed(fetcher, job, 20)  # the pipeline is flowing end to end

    # The indexer first (killing the embedder first would let it catch up and snapshot everything), the
    # embedder straight after, while crops are still coming. Whatever fails here, both are started again.
    try:
        key = snapshot_key(indexer)
        indexer_lost = kill_with_work_pending(
            bus, "indexer", topics.embedded, lambda ends: unsnapshotted(store, key, ends)
        )
        embedder_lost = kill_with_work_pending(
            bus, "embedder", topics.cropped, lambda ends: uncommitted(bus, embedder_group, ends)
        )
        # Outcomes on the topic now are all the dead indexer emitted (no other stage indexes).
        ended_at_kill, _ = terminal_outcomes(bus, job, outcomes_start)
    finally:
        stack.start_service(SPECS["embedder"])
        stack.start_service(SPECS["indexer"])
    assert len(ended_at_kill) < IMAGES, "the job was through before the kill: nothing was in flight"
    assert indexer_lost > 0, "the indexer's last snapshot held everything on `embedded`: nothing was in flight"
    assert embedder_lost > 0, "the embedder had committed everything on `cropped`: nothing was in flight"

    status = wait_done(fetcher, job)
    assert (status.total, status.indexed, status.duplicate, status.failed) == (IMAGES, IMAGES, 0, 0), dict(
        status.failed_by_reason
    )

    # Every record ends in exactly one terminal outcome, counted on the topic itself. A stage killed after
    # emitting but before making its input durable emits the same outcome again on replay (at-least-once
    # delivery, one effect): such repeats are identical; two different outcomes for one record are a bug.
    final, read = assert_each_record_ended_once(bus, job, outcomes_start, IMAGES)
    assert {state for state, *_ in final.values()} == {Outcome.INDEXED}
    repeats = read - len(final)
    print(f"in flight at the kills: indexer {indexer_lost}, embedder {embedder_lost}; {repeats} repeated outcomes")

    # The job's own view agrees, and every indexed image is in the index, including those the killed
    # indexer held only in memory.
    by_row = outcomes(fetcher, job)
    assert sorted(by_row) == list(range(IMAGES))
    indexed_ids = {by_row[row].image_id for row in by_row}
    assert indexed_ids == {image_id for _, image_id, _, _ in final.values()}
    listed = [image.image_id for image in indexer.ListImages(indexer_pb2.ListImagesRequest(job_id=job), timeout=60)]
    assert sorted(listed) == sorted(indexed_ids)
