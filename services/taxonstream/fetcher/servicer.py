"""Fetcher gRPC API: submit, retry, cancel and follow jobs; outcomes per record."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Iterator

from google.protobuf.json_format import MessageToDict, ParseDict
from kafka import KafkaProducer

from taxonstream.core.bus import Bus, Emit, send_all
from taxonstream.core.errors import InvalidArgument, NotFound
from taxonstream.core.store import ObjectStore, job_records_key, job_records_prefix
from taxonstream.fetcher.jobs import JobTable, read_outcomes
from taxonstream.fetching.safety import host_of
from taxonstream.v1 import fetcher_pb2, fetcher_pb2_grpc
from taxonstream.v1.messages_pb2 import Job, Outcome, Record

log = logging.getLogger(__name__)
CHUNK = 1000  # records per produce batch and per kept chunk


class FetcherServicer(fetcher_pb2_grpc.FetcherServicer):
    def __init__(self, bus: Bus, jobs: JobTable, store: ObjectStore | None = None) -> None:
        self.bus = bus
        self.jobs = jobs
        self.store = store

    @functools.cached_property
    def producer(self) -> KafkaProducer:
        return self.bus.producer()

    def SubmitJob(self, request_iterator: Iterator[fetcher_pb2.SubmitJobRequest], context) -> fetcher_pb2.JobStatus:
        first = next(request_iterator, None)
        if first is None or not first.HasField("spec"):
            raise InvalidArgument("the first message must be a JobSpec")
        job_id = first.spec.job_id or uuid.uuid4().hex[:12]
        created = int(time.time() * 1000)
        topics = self.bus.topics
        job = Job(job_id=job_id, source=first.spec.source, total=0, created_ms=created)
        send_all(self.producer, [Emit(topics.jobs, job_id, job)])
        total, pending = 0, []
        for item in request_iterator:
            if not item.HasField("record"):
                raise InvalidArgument("only records may follow the JobSpec")
            record = Record(
                record_id=f"{job_id}:{total}",
                job_id=job_id,
                row=total,
                url=item.record.url,
                metadata=item.record.metadata,
                force=first.spec.force,
            )
            pending.append(Emit(topics.records, host_of(record.url), record))
            total += 1
            if len(pending) >= CHUNK:
                self._keep(job_id, total // CHUNK - 1, pending)
                send_all(self.producer, pending)
                pending = []
        job.total = total
        if pending:
            self._keep(job_id, total // CHUNK, pending)
        send_all(self.producer, [*pending, Emit(topics.jobs, job_id, job)])
        if not self.jobs.wait_for(job_id, total, timeout=30):
            log.warning("job table is behind the jobs topic", extra={"job_id": job_id})
        log.info("job submitted", extra={"job_id": job_id, "records": total})
        return self.jobs.status(job_id) or fetcher_pb2.JobStatus(job_id=job_id, total=total, created_ms=created)

    def _keep(self, job_id: str, chunk: int, emits: list[Emit]) -> None:
        rows = [MessageToDict(e.message, preserving_proto_field_name=True) for e in emits]
        self.store.put_json(job_records_key(job_id, chunk), rows)

    def RetryJob(self, request, context) -> fetcher_pb2.JobStatus:
        job = self.jobs.job(request.job_id)
        if job is None:
            raise NotFound(f"no job {request.job_id!r}")
        failed = self.jobs.failed_record_ids(job.job_id, request.reasons)
        topics = self.bus.topics
        emits: list[Emit] = []
        for key in sorted(self.store.list(job_records_prefix(job.job_id))):
            for row in self.store.get_json(key) or []:
                record = ParseDict(row, Record())
                if record.record_id in failed:
                    # The record's outcome is cleared first, so the job counts as running until it ends again.
                    emits.append(
                        Emit(
                            topics.outcomes,
                            record.record_id,
                            Outcome(record_id=record.record_id, job_id=job.job_id, url=record.url),
                        )
                    )
                    emits.append(Emit(topics.records, host_of(record.url), record))
        send_all(self.producer, emits)
        for emit in emits:
            if isinstance(emit.message, Outcome):
                self.jobs.add_outcome(emit.message)
        log.info("job retried", extra={"job_id": job.job_id, "records": len(emits) // 2})
        return self.jobs.status(job.job_id)

    def GetJob(self, request, context) -> fetcher_pb2.JobStatus:
        status = self.jobs.status(request.job_id)
        if status is None:
            raise NotFound(f"no job {request.job_id!r}")
        return status

    def ListJobs(self, request, context) -> fetcher_pb2.ListJobsResponse:
        return fetcher_pb2.ListJobsResponse(jobs=[self.jobs.status(j) for j in self.jobs.job_ids()])

    def CancelJob(self, request, context) -> fetcher_pb2.JobStatus:
        job = self.jobs.job(request.job_id)
        if job is None:
            raise NotFound(f"no job {request.job_id!r}")
        cancelled = Job()
        cancelled.CopyFrom(job)
        cancelled.cancelled = True
        send_all(self.producer, [Emit(self.bus.topics.jobs, job.job_id, cancelled)])
        self.jobs.add_job(cancelled)
        return self.jobs.status(job.job_id)

    def ListOutcomes(self, request, context):
        if self.jobs.job(request.job_id) is None:
            raise NotFound(f"no job {request.job_id!r}")
        wanted = set(request.states)
        # The per-record report is read from the outcomes topic on demand: the table keeps counters only.
        for outcome in read_outcomes(self.bus, self.jobs, request.job_id):
            if not wanted or outcome.state in wanted:
                yield outcome
