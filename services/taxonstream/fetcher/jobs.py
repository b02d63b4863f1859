"""Job progress, derived from the `jobs` and `outcomes` topics (no state of its own in the pod).

Every fetcher replica reads both topics from the beginning, so any replica answers any job.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict

from google.protobuf.message import DecodeError

from taxonstream.core.bus import Bus, decode
from taxonstream.core.errors import Poison
from taxonstream.v1.fetcher_pb2 import JobStatus
from taxonstream.v1.messages_pb2 import Job, Outcome

log = logging.getLogger(__name__)


class JobTable:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._jobs: dict[str, Job] = {}
        self._outcomes: dict[str, dict[str, Outcome]] = defaultdict(dict)

    def add_job(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.job_id] = job
            self._lock.notify_all()

    def add_outcome(self, outcome: Outcome) -> None:
        with self._lock:
            # Last state wins, like the compacted topic: a re-delivered stage repeats the same state,
            # and a state-less outcome means the record was queued again (jobs retry).
            if outcome.state == Outcome.STATE_UNSPECIFIED:
                self._outcomes[outcome.job_id].pop(outcome.record_id, None)
            else:
                self._outcomes[outcome.job_id][outcome.record_id] = outcome
            self._lock.notify_all()

    def job(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def wait_for(self, job_id: str, total: int, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: (j := self._jobs.get(job_id)) is not None and j.total == total, timeout)

    def status(self, job_id: str) -> JobStatus | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            outcomes = list(self._outcomes.get(job_id, {}).values())
        states = Counter(o.state for o in outcomes)
        reasons = Counter(f"{o.stage}:{o.reason}" for o in outcomes if o.state == Outcome.FAILED)
        return JobStatus(
            job_id=job.job_id,
            source=job.source,
            total=job.total,
            indexed=states[Outcome.INDEXED],
            duplicate=states[Outcome.DUPLICATE],
            failed=states[Outcome.FAILED],
            done=job.total > 0 and len(outcomes) >= job.total,
            cancelled=job.cancelled,
            created_ms=job.created_ms,
            failed_by_reason=dict(reasons),
        )

    def job_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._jobs, key=lambda j: self._jobs[j].created_ms)

    def outcomes(self, job_id: str) -> list[Outcome]:
        with self._lock:
            return sorted(self._outcomes.get(job_id, {}).values(), key=lambda o: o.record_id)


def follow(bus: Bus, table: JobTable, stop: threading.Event) -> None:
    """Keep `table` up to date with both topics until `stop`."""
    topics = bus.topics
    consumer = bus.reader([topics.jobs, topics.outcomes])
    try:
        while not stop.is_set():
            for part in consumer.poll(timeout_ms=500, max_records=2000).values():
                for raw in part:
                    try:
                        if raw.topic == topics.jobs:
                            table.add_job(decode(raw.value, raw.headers, Job))
                        else:
                            table.add_outcome(decode(raw.value, raw.headers, Outcome))
                    except (Poison, DecodeError) as error:
                        log.warning(
                            "skipped a bad message",
                            extra={"topic": raw.topic, "offset": raw.offset, "error": str(error)},
                        )
    finally:
        consumer.close(autocommit=False)
