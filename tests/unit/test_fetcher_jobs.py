"""Job progress as counters: restart = snapshot + replay, re-deliveries counted once, GetJob's answer unchanged."""

from __future__ import annotations

import random
import zlib
from collections import Counter
from dataclasses import dataclass

from kafka import TopicPartition

from taxonstream.core.keys import job_progress_snapshot_key
from taxonstream.core.topics import Topics
from taxonstream.fetcher.jobs import EXAMPLES_PER_REASON, JobTable, newest_outcomes, restore
from taxonstream.v1.fetcher_pb2 import JobStatus
from taxonstream.v1.messages_pb2 import Job, Outcome

TOPICS = Topics()
PARTITIONS = 3
REASONS = [("fetcher", "http_404"), ("fetcher", "timeout"), ("detector", "no_specimen")]


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    value: Job | Outcome


def history(seed: int, jobs: int = 4, records: int = 60) -> list[Message]:
    """A plausible topic history: jobs submitted, outcomes (some failed, some re-delivered), retries."""
    rng = random.Random(seed)
    offsets: Counter[tuple[str, int]] = Counter()
    messages: list[Message] = []

    def send(topic: str, key: str, value: Job | Outcome) -> None:
        partition = zlib.crc32(key.encode()) % PARTITIONS if topic == TOPICS.outcomes else 0
        messages.append(Message(topic, partition, offsets[topic, partition], value))
        offsets[topic, partition] += 1

    def ended(job_id: str, row: int) -> Outcome:
        roll = rng.random()
        record = {"record_id": f"{job_id}:{row}", "job_id": job_id, "url": f"https://x.test/{job_id}/{row}.jpg"}
        if roll < 0.6:
            return Outcome(**record, state=Outcome.INDEXED, image_id=f"img{row}")
        if roll < 0.75:
            return Outcome(**record, state=Outcome.DUPLICATE, image_id="img0")
        stage, reason = rng.choice(REASONS)
        return Outcome(**record, state=Outcome.FAILED, stage=stage, reason=reason, message=f"{reason} at {stage}")

    for n in range(jobs):
        job_id = f"job{n}"
        send(TOPICS.jobs, job_id, Job(job_id=job_id, source=f"{job_id}.csv", created_ms=1000 + n))
        send(TOPICS.jobs, job_id, Job(job_id=job_id, source=f"{job_id}.csv", total=records, created_ms=1000 + n))
        rows = list(range(records - (n == jobs - 1) * 7))  # the last job is still running
        rng.shuffle(rows)
        for row in rows:
            outcome = ended(job_id, row)
            send(TOPICS.outcomes, outcome.record_id, outcome)
            if rng.random() < 0.2:  # at-least-once: a stage delivered the same outcome again
                send(TOPICS.outcomes, outcome.record_id, outcome)
        # `jobs retry`: failed records are cleared, then end again (maybe differently).
        failed = [m.value for m in messages if isinstance(m.value, Outcome) and m.value.job_id == job_id]
        for outcome in {o.record_id: o for o in failed}.values():
            if outcome.state == Outcome.FAILED and rng.random() < 0.5:
                send(TOPICS.outcomes, outcome.record_id, Outcome(record_id=outcome.record_id, job_id=job_id))
                again = ended(job_id, int(outcome.record_id.rpartition(":")[2]))
                send(TOPICS.outcomes, again.record_id, again)
    return messages


def apply(table: JobTable, messages: list[Message]) -> None:
    for m in messages:
        if isinstance(m.value, Job):
            table.add_job(m.value)
        else:
            table.add_outcome(m.value, m.partition, m.offset)
        table.advance(TopicPartition(m.topic, m.partition), m.offset + 1)


def replay_from(positions: dict[TopicPartition, int], messages: list[Message]) -> list[Message]:
    return [m for m in messages if m.offset >= positions.get(TopicPartition(m.topic, m.partition), 0)]


def reference_status(messages: list[Message], job_id: str) -> JobStatus:
    """What GetJob answered when the table kept every outcome: newest per record, counted on every call."""
    job = [m.value for m in messages if isinstance(m.value, Job) and m.value.job_id == job_id][-1]
    standing = {
        o.record_id: o for o in newest_outcomes([m.value for m in messages if isinstance(m.value, Outcome)], job_id)
    }
    states = Counter(o.state for o in standing.values())
    return JobStatus(
        job_id=job.job_id,
        source=job.source,
        total=job.total,
        indexed=states[Outcome.INDEXED],
        duplicate=states[Outcome.DUPLICATE],
        failed=states[Outcome.FAILED],
        done=job.total > 0 and len(standing) >= job.total,
        cancelled=job.cancelled,
        created_ms=job.created_ms,
        failed_by_reason=dict(Counter(f"{o.stage}:{o.reason}" for o in standing.values() if o.state == Outcome.FAILED)),
    )


def test_counters_equal_what_every_outcome_gives():
    for seed in range(5):
        messages = history(seed)
        table = JobTable()
        apply(table, messages)
        assert table.job_ids() == [f"job{n}" for n in range(4)]
        for job_id in table.job_ids():
            assert table.status(job_id) == reference_status(messages, job_id)
        assert not table.status("job3").done and table.status("job0").done


def test_snapshot_plus_replay_equals_a_table_that_saw_everything():
    messages = history(seed=11)
    whole = JobTable()
    apply(whole, messages)
    for cut in [0, 1, len(messages) // 3, len(messages) // 2, len(messages) - 1]:
        before = JobTable()
        apply(before, messages[:cut])
        restarted = JobTable.restore(before.dump())
        assert restarted.positions == before.positions
        apply(restarted, replay_from(restarted.positions, messages))
        for job_id in whole.job_ids():
            assert restarted.status(job_id) == whole.status(job_id)
            assert restarted.examples(job_id) == whole.examples(job_id)
            assert restarted.failed_record_ids(job_id) == whole.failed_record_ids(job_id)
            assert restarted.report_start(job_id, TOPICS.outcomes) == whole.report_start(job_id, TOPICS.outcomes)


def test_a_replay_from_older_offsets_counts_nothing_twice():
    # A snapshot written by a replica that was behind: the replay repeats messages the table already holds.
    messages = history(seed=3)
    whole = JobTable()
    apply(whole, messages)
    behind = JobTable()
    apply(behind, messages[: len(messages) // 2])
    restarted = JobTable.restore(behind.dump())
    apply(restarted, messages[len(messages) // 4 :])
    for job_id in whole.job_ids():
        assert restarted.status(job_id) == whole.status(job_id)


def test_a_re_delivered_outcome_counts_once():
    table = JobTable()
    table.add_job(Job(job_id="j", total=2))
    failed = Outcome(record_id="j:0", job_id="j", state=Outcome.FAILED, stage="fetcher", reason="http_404")
    for _ in range(3):
        table.add_outcome(failed)
        table.add_outcome(Outcome(record_id="j:1", job_id="j", state=Outcome.INDEXED))
    status = table.status("j")
    assert (status.indexed, status.failed, status.done) == (1, 1, True)
    assert dict(status.failed_by_reason) == {"fetcher:http_404": 1}
    assert [o.record_id for o in table.examples("j")["fetcher:http_404"]] == ["j:0"]


def test_a_retried_record_moves_from_failed_to_its_new_state():
    table = JobTable()
    table.add_job(Job(job_id="j", total=1))
    table.add_outcome(Outcome(record_id="j:0", job_id="j", state=Outcome.FAILED, stage="fetcher", reason="timeout"))
    assert table.failed_record_ids("j", ["timeout"]) == {"j:0"}
    assert table.failed_record_ids("j", ["http_404"]) == set()
    table.add_outcome(Outcome(record_id="j:0", job_id="j"))  # cleared by `jobs retry`
    running = table.status("j")
    assert (running.failed, running.done, dict(running.failed_by_reason)) == (0, False, {})
    assert table.examples("j") == {}
    table.add_outcome(Outcome(record_id="j:0", job_id="j", state=Outcome.INDEXED))
    assert (table.status("j").indexed, table.status("j").done) == (1, True)


def test_examples_are_bounded_per_reason():
    table = JobTable()
    table.add_job(Job(job_id="j", total=20))
    for row in range(20):
        reason = "http_404" if row % 2 else "timeout"
        table.add_outcome(
            Outcome(record_id=f"j:{row}", job_id="j", state=Outcome.FAILED, stage="fetcher", reason=reason)
        )
    examples = table.examples("j")
    assert {r: len(kept) for r, kept in examples.items()} == {
        "fetcher:http_404": EXAMPLES_PER_REASON,
        "fetcher:timeout": EXAMPLES_PER_REASON,
    }
    assert table.status("j").failed_by_reason == {"fetcher:http_404": 10, "fetcher:timeout": 10}


def test_record_ids_that_name_no_row_are_still_counted_once():
    table = JobTable()
    table.add_job(Job(job_id="j", total=3))
    for record_id in ["other-scheme-7", "j:99999999999", "j:0"]:
        for _ in range(2):
            table.add_outcome(Outcome(record_id=record_id, job_id="j", state=Outcome.INDEXED))
    assert (table.status("j").indexed, table.status("j").done) == (3, True)
    assert len(table.dump()) < 2_000  # the huge row did not become a huge array


def test_a_finished_job_snapshots_compactly():
    table = JobTable()
    records = 100_000
    table.add_job(Job(job_id="big", source="big.csv", total=records))
    for row in range(records):
        table.add_outcome(Outcome(record_id=f"big:{row}", job_id="big", state=Outcome.INDEXED, image_id=f"i{row}"))
    assert table.status("big").done
    snapshot = table.dump()
    assert len(snapshot) < 5_000  # the records' states compress to about nothing: not 100k outcomes
    restored = JobTable.restore(snapshot)
    assert restored.status("big") == table.status("big")
    restored.add_outcome(Outcome(record_id="big:5", job_id="big"))  # a done job's packed states unpack on change
    assert restored.status("big").indexed == records - 1


def test_newest_outcomes_keeps_the_last_standing_one_per_record():
    outcomes = [
        Outcome(record_id="j:0", job_id="j", state=Outcome.FAILED, reason="timeout"),
        Outcome(record_id="k:0", job_id="k", state=Outcome.INDEXED),
        Outcome(record_id="j:1", job_id="j", state=Outcome.INDEXED),
        Outcome(record_id="j:0", job_id="j"),
        Outcome(record_id="j:1", job_id="j", state=Outcome.DUPLICATE),
    ]
    assert [(o.record_id, o.state) for o in newest_outcomes(outcomes, "j")] == [("j:1", Outcome.DUPLICATE)]


class _Store:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def get(self, key: str) -> bytes:
        return self.objects[key]


class _Bus:
    topics = TOPICS

    def __init__(self, ends: dict[TopicPartition, int]) -> None:
        self.ends = ends

    def end_offsets(self, topic: str) -> dict[TopicPartition, int]:
        return {tp: o for tp, o in self.ends.items() if tp.topic == topic}


def test_a_snapshot_ahead_of_the_topics_is_not_used():
    table = JobTable()
    apply(table, history(seed=5, jobs=1, records=10))
    store = _Store({job_progress_snapshot_key(TOPICS.prefix): table.dump()})
    assert restore(store, _Bus(dict(table.positions))) is not None
    emptied = {tp: 0 for tp in table.positions}  # the topics were recreated (a reset stack)
    assert restore(store, _Bus(emptied)) is None
    assert restore(_Store({}), _Bus(emptied)) is None
    assert restore(_Store({job_progress_snapshot_key(TOPICS.prefix): b"not gzip"}), _Bus(emptied)) is None
