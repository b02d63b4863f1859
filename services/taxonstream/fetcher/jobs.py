"""Job progress as per-job counters, derived from the `jobs` and `outcomes` topics.

Every fetcher replica follows both topics, so any replica answers any job. It keeps counts per job
(terminal states, failures by `stage:reason` with a few example outcomes each), never every outcome,
and restores them at start from a snapshot in S3 plus a replay of both topics from the snapshot's
offsets, so start-up does not re-read the whole history.

Exactly one terminal state per record, under at-least-once delivery: the outcomes topic is keyed by
record id and only a record's newest outcome counts (a retry clears it, a re-delivery repeats it). To
tell a repeat from a change the table remembers each record's current state in 2 bytes, indexed by the
record's row (record ids are `<job>:<row>`): 2 MB for a job of a million records while it runs. A
finished job's states are kept zlib-compressed (a million mostly-equal states compress to a few KB)
and unpacked only if one of its records changes again (a retry, a late re-delivery).

The full per-record report (ListOutcomes) is a rare, explicit request: it reads the outcomes topic on
demand, from where the job's first outcome was seen on each partition (`read_outcomes`).
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import threading
import time
import zlib
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from kafka import TopicPartition

from taxonstream.core.bus import Bus, decode
from taxonstream.core.errors import Poison, Transient
from taxonstream.core.keys import job_progress_snapshot_key
from taxonstream.core.store import ObjectStore
from taxonstream.core.supervision import report_ok
from taxonstream.v1.fetcher_pb2 import JobStatus
from taxonstream.v1.messages_pb2 import Job, Outcome

log = logging.getLogger(__name__)

EXAMPLES_PER_REASON = 3  # failed outcomes kept per `stage:reason`, the first seen
SNAPSHOT_SECONDS = 30.0  # a snapshot at most this often while the topics move, and always at stop
SNAPSHOT_FORMAT = 1
# A row this far past a job's known rows is not one the fetcher numbered: remembered by record id instead,
# so a stray id cannot make the table allocate a huge array.
MAX_ROW_GAP = 1_000_000

# A record's state code: 0 no terminal state yet, 1 indexed, 2 duplicate, FAILED_BASE + i failed for the
# job's i-th `stage:reason`.
PENDING, INDEXED, DUPLICATE, FAILED_BASE = 0, 1, 2, 3
_MAX_REASONS = 0xFFFF - FAILED_BASE  # the codes fit an unsigned 16-bit array


@dataclass
class _Progress:
    """One job's counters and the current state of each of its records."""

    job: Job | None = None
    indexed: int = 0
    duplicate: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[Outcome]] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)  # code FAILED_BASE + i is reasons[i]
    rows: array | None = field(default_factory=lambda: array("H"))  # None while packed
    packed: bytes = b""  # zlib of `rows` once the job is done
    by_record_id: dict[str, int] = field(default_factory=dict)  # records whose id names no row of this job
    first_offsets: dict[int, int] = field(default_factory=dict)  # outcomes partition -> first offset seen

    @property
    def failed(self) -> int:
        return sum(self.failed_by_reason.values())

    @property
    def finished(self) -> int:
        return self.indexed + self.duplicate + self.failed

    @property
    def done(self) -> bool:
        return self.job is not None and self.job.total > 0 and self.finished >= self.job.total

    def states(self) -> array:
        if self.rows is None:
            self.rows = array("H")
            self.rows.frombytes(zlib.decompress(self.packed))
            self.packed = b""
        return self.rows

    def pack(self) -> None:
        """Done jobs keep their states compressed: they rarely change again."""
        if self.rows is not None:
            self.packed = zlib.compress(self.rows.tobytes(), 6)
            self.rows = None

    def packed_states(self) -> bytes:
        return self.packed if self.rows is None else zlib.compress(self.rows.tobytes(), 6)

    def code_for(self, outcome: Outcome) -> int:
        if outcome.state == Outcome.INDEXED:
            return INDEXED
        if outcome.state == Outcome.DUPLICATE:
            return DUPLICATE
        if outcome.state != Outcome.FAILED:
            return PENDING  # a state-less outcome: the record was queued again (jobs retry)
        reason = f"{outcome.stage}:{outcome.reason}"
        if reason not in self.reasons and len(self.reasons) >= _MAX_REASONS:
            reason = "other:too_many_reasons"
        if reason not in self.reasons:
            self.reasons.append(reason)
        return FAILED_BASE + self.reasons.index(reason)

    def apply(self, outcome: Outcome, job_id: str) -> None:
        new = self.code_for(outcome)
        row = _row_of(outcome.record_id, job_id)
        if row is not None and row - len(self.states()) > MAX_ROW_GAP:
            row = None
        if row is None:
            old = self.by_record_id.get(outcome.record_id, PENDING)
        else:
            states = self.states()
            old = states[row] if row < len(states) else PENDING
        if old == new:
            return  # a re-delivered outcome: it was counted once already
        if row is None:
            if new == PENDING:
                self.by_record_id.pop(outcome.record_id, None)
            else:
                self.by_record_id[outcome.record_id] = new
        else:
            states = self.states()
            if row >= len(states):
                states.frombytes(bytes(2 * (row + 1 - len(states))))  # zeros: pending
            states[row] = new
        self._count(old, -1, outcome.record_id)
        self._count(new, +1, outcome.record_id, outcome)

    def _count(self, code: int, step: int, record_id: str, outcome: Outcome | None = None) -> None:
        if code == INDEXED:
            self.indexed += step
        elif code == DUPLICATE:
            self.duplicate += step
        elif code >= FAILED_BASE:
            reason = self.reasons[code - FAILED_BASE]
            count = self.failed_by_reason.get(reason, 0) + step
            if count:
                self.failed_by_reason[reason] = count
            else:
                self.failed_by_reason.pop(reason, None)
            kept = self.examples.setdefault(reason, [])
            if step < 0:
                kept[:] = [o for o in kept if o.record_id != record_id]
            elif outcome is not None and len(kept) < EXAMPLES_PER_REASON:
                kept.append(outcome)
            if not kept:
                self.examples.pop(reason, None)

    def failed_record_ids(self, job_id: str, reasons: set[str]) -> set[str]:
        wanted = {FAILED_BASE + i for i, r in enumerate(self.reasons) if not reasons or r.partition(":")[2] in reasons}
        found = {f"{job_id}:{row}" for row, code in enumerate(self.states()) if code in wanted}
        found.update(record_id for record_id, code in self.by_record_id.items() if code in wanted)
        return found

    def to_json(self) -> dict:
        return {
            "job": _b64(self.job.SerializeToString()) if self.job is not None else None,
            "indexed": self.indexed,
            "duplicate": self.duplicate,
            "failed_by_reason": self.failed_by_reason,
            "examples": {r: [_b64(o.SerializeToString()) for o in kept] for r, kept in self.examples.items()},
            "reasons": self.reasons,
            "states": _b64(self.packed_states()),
            "by_record_id": self.by_record_id,
            "first_offsets": {str(p): o for p, o in self.first_offsets.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> _Progress:
        progress = cls(
            job=Job.FromString(base64.b64decode(data["job"])) if data["job"] else None,
            indexed=int(data["indexed"]),
            duplicate=int(data["duplicate"]),
            failed_by_reason={r: int(n) for r, n in data["failed_by_reason"].items()},
            examples={
                r: [Outcome.FromString(base64.b64decode(o)) for o in kept] for r, kept in data["examples"].items()
            },
            reasons=list(data["reasons"]),
            rows=None,
            packed=base64.b64decode(data["states"]),
            by_record_id={k: int(v) for k, v in data["by_record_id"].items()},
            first_offsets={int(p): int(o) for p, o in data["first_offsets"].items()},
        )
        if not progress.done:
            progress.states()  # a running job's records will change: unpack now
        return progress


def _row_of(record_id: str, job_id: str) -> int | None:
    head, colon, row = record_id.rpartition(":")
    return int(row) if colon and head == job_id and row.isdigit() else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class JobTable:
    """Per-job progress, cheap to read: a GetJob builds its answer from a handful of counters."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._progress: dict[str, _Progress] = {}
        # How far the table has read each topic partition: the offsets a snapshot of it includes.
        self.positions: dict[TopicPartition, int] = {}
        self.changed = False

    def _of(self, job_id: str) -> _Progress:
        progress = self._progress.get(job_id)
        if progress is None:
            progress = self._progress[job_id] = _Progress()
        return progress

    def add_job(self, job: Job) -> None:
        with self._lock:
            progress = self._of(job.job_id)
            progress.job = job
            if progress.done:
                progress.pack()
            self.changed = True
            self._lock.notify_all()

    def add_outcome(self, outcome: Outcome, partition: int | None = None, offset: int | None = None) -> None:
        with self._lock:
            progress = self._of(outcome.job_id)
            if partition is not None and offset is not None:
                progress.first_offsets[partition] = min(progress.first_offsets.get(partition, offset), offset)
            progress.apply(outcome, outcome.job_id)
            if progress.done:
                progress.pack()
            self.changed = True
            self._lock.notify_all()

    def advance(self, tp: TopicPartition, next_offset: int) -> None:
        """The follower has applied everything of `tp` before `next_offset`."""
        with self._lock:
            self.positions[tp] = next_offset

    def reached(self, ends: dict[TopicPartition, int]) -> bool:
        with self._lock:
            return all(self.positions.get(tp, 0) >= end for tp, end in ends.items())

    def job(self, job_id: str) -> Job | None:
        with self._lock:
            progress = self._progress.get(job_id)
            return progress.job if progress is not None else None

    def wait_for(self, job_id: str, total: int, timeout: float) -> bool:
        def arrived() -> bool:
            progress = self._progress.get(job_id)
            return progress is not None and progress.job is not None and progress.job.total == total

        with self._lock:
            return self._lock.wait_for(arrived, timeout)

    def status(self, job_id: str) -> JobStatus | None:
        with self._lock:
            progress = self._progress.get(job_id)
            if progress is None or progress.job is None:
                return None
            job = progress.job
            return JobStatus(
                job_id=job.job_id,
                source=job.source,
                total=job.total,
                indexed=progress.indexed,
                duplicate=progress.duplicate,
                failed=progress.failed,
                done=progress.done,
                cancelled=job.cancelled,
                created_ms=job.created_ms,
                failed_by_reason=dict(progress.failed_by_reason),
            )

    def job_ids(self) -> list[str]:
        with self._lock:
            known = [(p.job.created_ms, job_id) for job_id, p in self._progress.items() if p.job is not None]
        return [job_id for _, job_id in sorted(known)]

    def examples(self, job_id: str) -> dict[str, list[Outcome]]:
        """Up to EXAMPLES_PER_REASON failed outcomes per `stage:reason` (the first seen that still stand)."""
        with self._lock:
            progress = self._progress.get(job_id)
            return {r: list(kept) for r, kept in progress.examples.items()} if progress is not None else {}

    def failed_record_ids(self, job_id: str, reasons: Iterable[str] = ()) -> set[str]:
        """Records of the job whose outcome stands at FAILED, for these reasons (bare, e.g. http_404) or any."""
        with self._lock:
            progress = self._progress.get(job_id)
            return progress.failed_record_ids(job_id, set(reasons)) if progress is not None else set()

    def report_start(self, job_id: str, topic: str) -> dict[TopicPartition, int]:
        """Where the job's outcomes begin on each partition of `topic` (the read position where none was seen)."""
        with self._lock:
            progress = self._progress.get(job_id)
            seen = progress.first_offsets if progress is not None else {}
            start = {tp: o for tp, o in self.positions.items() if tp.topic == topic}
            start.update({TopicPartition(topic, p): o for p, o in seen.items()})
            return start

    # -- snapshots --------------------------------------------------------------------------------------------

    def dump(self) -> bytes:
        """The whole table and the topic offsets it includes, gzip-compressed JSON."""
        with self._lock:
            snapshot = {
                "format": SNAPSHOT_FORMAT,
                "offsets": {f"{tp.topic}:{tp.partition}": o for tp, o in self.positions.items()},
                "jobs": {job_id: p.to_json() for job_id, p in self._progress.items()},
            }
            self.changed = False
        return gzip.compress(json.dumps(snapshot, separators=(",", ":")).encode(), 6)

    @classmethod
    def restore(cls, data: bytes) -> JobTable:
        snapshot = json.loads(gzip.decompress(data))
        if snapshot.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"job progress snapshot format {snapshot.get('format')!r}, expected {SNAPSHOT_FORMAT}")
        table = cls()
        for name, offset in snapshot["offsets"].items():
            topic, _, partition = name.rpartition(":")
            table.positions[TopicPartition(topic, int(partition))] = int(offset)
        table._progress = {job_id: _Progress.from_json(p) for job_id, p in snapshot["jobs"].items()}
        return table

    def adopt(self, other: JobTable) -> None:
        """Take over a restored table's state (the services already hold this object)."""
        with self._lock:
            self._progress, self.positions = other._progress, dict(other.positions)
            self._lock.notify_all()


def restore(store: ObjectStore, bus: Bus) -> JobTable | None:
    """The newest snapshot, if it is usable against the topics as they are now; None means replay everything."""
    try:
        data = store.get(job_progress_snapshot_key(bus.topics.prefix))
    except KeyError:
        return None
    try:
        table = JobTable.restore(data)
    except (ValueError, KeyError, TypeError, OSError, DecodeError) as error:
        log.warning("job progress snapshot unreadable; replaying the topics", extra={"error": str(error)})
        return None
    topics = {bus.topics.jobs, bus.topics.outcomes}
    ends = {**bus.end_offsets(bus.topics.jobs), **bus.end_offsets(bus.topics.outcomes)}
    stale = [tp for tp, o in table.positions.items() if tp.topic not in topics or o > ends.get(tp, 0)]
    if stale:  # topics recreated (a reset stack) or renamed: the snapshot describes other data
        log.warning("job progress snapshot is ahead of the topics; replaying them", extra={"partitions": len(stale)})
        return None
    log.info("restored job progress", extra={"jobs": len(table.job_ids()), "offsets": len(table.positions)})
    return table


class JobFollower:
    """Keeps a JobTable up to date with both topics; snapshots it to S3 now and then and at stop."""

    def __init__(self, bus: Bus, store: ObjectStore | None, table: JobTable) -> None:
        self.bus = bus
        self.store = store
        self.table = table
        self.replay_to: dict[TopicPartition, int] | None = None
        self._restored = False  # a `run` restarted after an outage goes on from the table's positions

    def caught_up(self) -> bool:
        """True once the table holds what both topics held when following began (snapshot + replay)."""
        if self.replay_to is None:
            return False
        return self.table.reached(self.replay_to)

    def run(self, stop: threading.Event) -> None:
        topics = self.bus.topics
        if self.store is not None and not self._restored:
            self._restored = True
            try:
                restored = restore(self.store, self.bus)
            except Transient as error:  # S3 down at start: a full replay is slower, never wrong
                log.warning("job progress snapshot not readable; replaying the topics", extra={"error": str(error)})
                restored = None
            if restored is not None:
                self.table.adopt(restored)
        self.replay_to = {**self.bus.end_offsets(topics.jobs), **self.bus.end_offsets(topics.outcomes)}
        consumer = self.bus.reader([topics.jobs, topics.outcomes], start=dict(self.table.positions))
        last_snapshot = time.monotonic()
        try:
            while not stop.is_set():
                for tp, part in consumer.poll(timeout_ms=500, max_records=2000).items():
                    for raw in part:
                        self._apply(raw)
                    self.table.advance(tp, part[-1].offset + 1)
                report_ok()
                if time.monotonic() - last_snapshot >= SNAPSHOT_SECONDS:
                    self.snapshot()
                    last_snapshot = time.monotonic()
        finally:
            consumer.close(autocommit=False)
            self.snapshot()

    def _apply(self, raw) -> None:
        try:
            if raw.topic == self.bus.topics.jobs:
                self.table.add_job(decode(raw.value, raw.headers, Job))
            else:
                self.table.add_outcome(decode(raw.value, raw.headers, Outcome), raw.partition, raw.offset)
        except (Poison, DecodeError) as error:
            log.warning("skipped a bad message", extra={"topic": raw.topic, "offset": raw.offset, "error": str(error)})

    def snapshot(self) -> None:
        """Every replica may write it: each is a true picture at its offsets, and replay fixes the rest."""
        if self.store is None or not self.table.changed:
            return
        try:
            self.store.put(job_progress_snapshot_key(self.bus.topics.prefix), self.table.dump(), "application/gzip")
        except Transient as error:  # S3 down: the next snapshot (or a longer replay) covers it
            self.table.changed = True
            log.warning("job progress snapshot not written", extra={"error": str(error)})


def newest_outcomes(outcomes: Iterable[Outcome], job_id: str) -> list[Outcome]:
    """A job's standing outcomes from the topic's in order: the newest per record, cleared ones dropped."""
    standing: dict[str, Outcome] = {}
    for outcome in outcomes:
        if outcome.job_id != job_id:
            continue
        if outcome.state == Outcome.STATE_UNSPECIFIED:
            standing.pop(outcome.record_id, None)
        else:
            standing[outcome.record_id] = outcome
    return sorted(standing.values(), key=lambda o: o.record_id)


def read_outcomes(bus: Bus, table: JobTable, job_id: str, timeout: float = 120.0) -> list[Outcome]:
    """Every standing outcome of a job, read from the outcomes topic now (from where the job's outcomes begin)."""
    topic = bus.topics.outcomes
    ends = {tp: o for tp, o in bus.end_offsets(topic).items() if o > 0}
    consumer = bus.reader([topic], start=table.report_start(job_id, topic))
    deadline = time.monotonic() + timeout

    def messages() -> Iterator[Outcome]:
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise Transient(f"the outcomes topic was not read to its end within {timeout:.0f} s")
            for part in consumer.poll(timeout_ms=500, max_records=5000).values():
                for raw in part:
                    if raw.offset >= ends.get(TopicPartition(raw.topic, raw.partition), 0):
                        continue  # newer than the request: the next report shows it
                    try:
                        yield decode(raw.value, raw.headers, Outcome)
                    except (Poison, DecodeError):
                        continue  # the follower logs bad messages; a report just leaves them out

    try:
        return newest_outcomes(messages(), job_id)
    finally:
        consumer.close(autocommit=False)
