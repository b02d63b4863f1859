"""Job counters right after a fetcher restart (issue 12).

The fetcher's counters are restored from its job-progress snapshot in S3, then `jobs` and `outcomes` are
replayed from the offsets that snapshot includes; the fetcher reports SERVING only once that replay has
reached the topics' ends. So the first GetJob after a SIGKILL must already agree with the job's outcomes,
for a job that ended before the kill and for one that was in flight when it came — and the restart must
have used the snapshot, not re-read every outcome from the start of the topics.
"""

from __future__ import annotations

import collections
import gzip
import json

from pipeline_helpers import submit, unique_job, wait_done, wait_until

from taxonstream.core.keys import job_progress_snapshot_key
from taxonstream.v1 import fetcher_pb2
from taxonstream.v1.messages_pb2 import Outcome
from tools.stack import local_stack as stack

SPECS = {s.name: s for s in stack.SERVICES}


def counters(status: fetcher_pb2.JobStatus) -> tuple[int, int, int, int, dict[str, int]]:
    return status.total, status.indexed, status.duplicate, status.failed, dict(status.failed_by_reason)


def tally(fetcher, job_id: str, total: int) -> tuple[int, int, int, int, dict[str, int]]:
    """The same counters, counted here from the job's standing outcomes (one per record)."""
    found = list(fetcher.ListOutcomes(fetcher_pb2.ListOutcomesRequest(job_id=job_id), timeout=60))
    assert len({o.record_id for o in found}) == len(found), "a record has two standing outcomes"
    states = collections.Counter(o.state for o in found)
    reasons = collections.Counter(f"{o.stage}:{o.reason}" for o in found if o.state == Outcome.FAILED)
    return total, states[Outcome.INDEXED], states[Outcome.DUPLICATE], states[Outcome.FAILED], dict(reasons)


def snapshot_positions(store, bus) -> dict[str, int]:
    """What the fetchers' job-progress snapshot includes: next offset per "topic:partition" (0 if none)."""
    try:
        data = store.get(job_progress_snapshot_key(bus.topics.prefix))
    except KeyError:
        return {}
    return json.loads(gzip.decompress(data))["offsets"]


def test_job_counters_are_right_on_the_first_answer_after_a_fetcher_restart(fetcher, bus, store, site):
    ended_job = unique_job("progress-ended")
    images = site.images(14)
    urls = [site.url("img", image) for image in images[:12]]
    urls += [site.url("img", images[0]), site.url("img", images[1])]  # exact copies: DUPLICATE
    urls += [site.url("img", f"gone-{k}.jpg") for k in range(3)]  # 404: FAILED
    submit(fetcher, ended_job, urls)
    before = counters(wait_done(fetcher, ended_job))
    assert before == tally(fetcher, ended_job, len(urls))
    assert before[1:4] == (12, 2, 3), before

    # A snapshot that includes the ended job, then a second job flowing (1 s a picture, 40 of them) when the kill comes:
    # the restart has a snapshot to restore and outcomes after it to replay.
    ends = bus.end_offsets(bus.topics.outcomes)
    wait_until(
        lambda: all(snapshot_positions(store, bus).get(f"{tp.topic}:{tp.partition}", 0) >= o for tp, o in ends.items()),
        "a job-progress snapshot that includes the ended job",
        timeout=90,
    )
    flowing = unique_job("progress-flowing")
    flowing_images = images[12:] + site.images(38)  # 8 at a time per host: ~5 s at least
    submit(fetcher, flowing, [site.url("slow", image) for image in flowing_images])

    def status() -> tuple:
        return counters(fetcher.GetJob(fetcher_pb2.GetJobRequest(job_id=flowing), timeout=30))

    wait_until(lambda: status()[1] >= 2, "the second job under way")
    log = stack.stack_dir() / "logs" / "fetcher.log"
    log_start = log.stat().st_size
    try:
        stack.kill_service("fetcher")
    finally:
        stack.start_service(SPECS["fetcher"])
    mid_job = status()

    after = counters(fetcher.GetJob(fetcher_pb2.GetJobRequest(job_id=ended_job), timeout=30))
    assert after == before, f"after the restart the ended job reads {after}, before it {before}"
    assert 2 <= mid_job[1] + mid_job[2] + mid_job[3] < len(flowing_images), f"not in flight at the kill: {mid_job}"
    with open(log, errors="replace") as handle:
        handle.seek(log_start)
        lines = [json.loads(line) for line in handle if line.startswith("{")]
    assert any(line.get("msg") == "restored job progress" for line in lines), "the restart replayed every outcome"

    done = wait_done(fetcher, flowing)
    assert counters(done) == tally(fetcher, flowing, len(flowing_images))
    assert counters(done)[1:4] == (len(flowing_images), 0, 0), counters(done)
