"""Kafka: topic set-up, typed producing, and readers that see every partition.

Messages are protobufs with a `ts-type` header naming their type, so a consumer can tell a message
of the wrong type from a damaged one and dead-letter both with a clear reason.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError, Message
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.errors import KafkaError, TopicAlreadyExistsError

from taxonstream.core.errors import Poison
from taxonstream.core.settings import CoreSettings
from taxonstream.core.topics import Topics

log = logging.getLogger(__name__)

TYPE_HEADER = "ts-type"
M = TypeVar("M", bound=Message)
# What a reader does when a position it must start from is gone (retention deleted it, or the topic was
# recreated): "earliest" reads from the oldest message kept, with a warning naming what was skipped;
# "refuse" raises OffsetsLost, for a consumer whose state would silently miss those messages (the index).
# Never kafka-python's default, "latest", which jumps to the end and skips everything in between.
OnGap = Literal["earliest", "refuse"]


class OffsetsLost(RuntimeError):
    """A reader's start positions are no longer in the topic, and it must not skip what was between."""


@dataclass(frozen=True)
class Gap:
    """A start position outside what the partition still holds (`earliest` to `end`, end exclusive)."""

    partition: TopicPartition
    wanted: int
    earliest: int
    end: int

    def describe(self) -> str:
        if self.wanted < self.earliest:
            lost = f"{self.earliest - self.wanted} messages deleted before offset {self.earliest}"
        else:
            lost = f"the partition ends at {self.end} (was the topic recreated?)"
        return f"{self.partition.topic}[{self.partition.partition}] from {self.wanted}: {lost}"


def start_positions(
    assigned: Sequence[TopicPartition],
    start: Mapping[TopicPartition, int] | None,
    earliest: Mapping[TopicPartition, int],
    end: Mapping[TopicPartition, int],
) -> tuple[dict[TopicPartition, int | None], list[Gap]]:
    """Where each partition starts (None: its beginning), and the wanted positions that are gone."""
    positions: dict[TopicPartition, int | None] = {}
    gaps: list[Gap] = []
    for tp in assigned:
        wanted = (start or {}).get(tp)
        if wanted is not None and not earliest.get(tp, 0) <= wanted <= end.get(tp, wanted):
            gaps.append(Gap(tp, wanted, earliest.get(tp, 0), end.get(tp, wanted)))
            wanted = None
        positions[tp] = wanted
    return positions, gaps


@dataclass(frozen=True)
class Emit:
    """One message a worker wants produced once its input is done."""

    topic: str
    key: str
    message: Message


def decode(value: bytes | None, headers: Iterable[tuple[str, bytes]] | None, message_type: type[M]) -> M:
    """Parse a topic message strictly: wrong declared type, garbage or foreign fields are Poison."""
    expected = message_type.DESCRIPTOR.full_name
    declared = dict(headers or []).get(TYPE_HEADER)
    if declared is not None and declared.decode(errors="replace") != expected:
        raise Poison("wrong_type", f"expected {expected}, got {declared.decode(errors='replace')}")
    if not value:
        raise Poison("empty", f"empty value where {expected} was expected")
    message = message_type()
    try:
        message.ParseFromString(value)
    except DecodeError as error:
        raise Poison("undecodable", f"not a {expected}: {error}") from error
    # Bytes of another type often parse "successfully" into fields this type does not have.
    if len(unknown_fields.UnknownFieldSet(message)):
        raise Poison("wrong_type", f"fields unknown to {expected}")
    return message


class Bus:
    """Factory for producers, consumers and topics, all configured from the shared settings."""

    def __init__(self, settings: CoreSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.bootstrap = settings.kafka_bootstrap.split(",")

    def producer(self) -> KafkaProducer:
        return KafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=5,
            retries=10,
            max_in_flight_requests_per_connection=1,  # keeps per-key order across retries
        )

    def group_consumer(self, group: str, topics: list[str], max_batch: int) -> GroupConsumer:
        consumer = GroupConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=max_batch,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            max_poll_interval_ms=600_000,
            # Eager assignors: the cooperative one loops against Kafka 2.3 (see LOCAL_STACK.md).
            partition_assignment_strategy=[RangePartitionAssignor, RoundRobinPartitionAssignor],
        )
        consumer.watch(topics)
        return consumer

    def reader(
        self, topics: Sequence[str], start: Mapping[TopicPartition, int] | None = None, on_gap: OnGap = "earliest"
    ) -> KafkaConsumer:
        """A consumer of every partition of `topics`, outside any group, from `start` or the beginning.

        A start position retention has deleted is a gap: see `OnGap`. Later in the run, a position that
        retention overtakes resets to the earliest kept ("earliest") or raises OffsetOutOfRangeError ("refuse").
        """
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if on_gap == "earliest" else "none",
        )
        try:
            assigned = [TopicPartition(t, p) for t in topics for p in self.partitions(consumer, t)]
            consumer.assign(assigned)
            bounds = (consumer.beginning_offsets(assigned), consumer.end_offsets(assigned)) if start else ({}, {})
            positions, gaps = start_positions(assigned, start, *bounds)
            if gaps and on_gap == "refuse":
                raise OffsetsLost(
                    "refusing to start: the positions to resume from are gone, and starting elsewhere would "
                    "skip messages: " + "; ".join(g.describe() for g in gaps)
                )
            if gaps:
                log.warning(
                    "start positions gone; reading from the earliest message kept",
                    extra={"gaps": [g.describe() for g in gaps]},
                )
        except BaseException:
            consumer.close(autocommit=False)
            raise
        for tp, position in positions.items():
            if position is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, position)
        return consumer

    def end_offsets(self, topic: str) -> dict[TopicPartition, int]:
        """The next offset of every partition of `topic`: where a reader starting "now" begins."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        try:
            partitions = [TopicPartition(topic, p) for p in self.partitions(consumer, topic)]
            return dict(consumer.end_offsets(partitions))
        finally:
            consumer.close(autocommit=False)

    @staticmethod
    def partitions(consumer: KafkaConsumer, topic: str, timeout: float = 30.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            found = consumer.partitions_for_topic(topic)
            if found:
                return sorted(found)
            if time.monotonic() > deadline:
                raise KafkaError(f"topic {topic} has no partitions (was it created?)")
            time.sleep(0.2)

    def ensure_topics(self, timeout: float = 60.0) -> None:
        """Create any missing topic; safe to call from every pod at start."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="taxonstream-admin")
                break
            except KafkaError as error:
                if time.monotonic() > deadline:
                    raise
                log.warning("kafka not reachable yet", extra={"error": str(error)})
                time.sleep(1)
        try:
            existing = set(admin.list_topics())
            missing = [
                NewTopic(name, self.settings.topic_partitions, self.settings.topic_replication, topic_configs=config)
                for name, config in self.topics.all().items()
                if name not in existing
            ]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):  # another pod won the race
                    admin.create_topics(missing)
                log.info("created topics", extra={"topics": [t.name for t in missing]})
        finally:
            admin.close()


class GroupConsumer(KafkaConsumer):
    """A group member that re-joins when a revoke is never followed by an assignment.

    kafka-python 3.0.12 can stall for ever after a broker restart with no partitions flowing (seen in
    7 of 23 restarts here, LOCAL_STACK.md); unsubscribing and subscribing again recovers it.
    """

    STALL_SECONDS = 30.0

    def watch(self, topics: list[str]) -> None:
        self._watched = topics
        self._revoked_at: float | None = None
        self.subscribe(topics, listener=_Listener(self))

    def poll(self, *args, **kwargs):
        if self._revoked_at is not None and time.monotonic() - self._revoked_at > self.STALL_SECONDS:
            log.warning("no assignment since a revoke; re-joining the group", extra={"topics": self._watched})
            self.unsubscribe()
            self._revoked_at = time.monotonic()
            self.subscribe(self._watched, listener=_Listener(self))
        return super().poll(*args, **kwargs)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, consumer: GroupConsumer) -> None:
        self.consumer = consumer

    def on_partitions_revoked(self, revoked) -> None:
        self.consumer._revoked_at = time.monotonic()

    def on_partitions_assigned(self, assigned) -> None:
        self.consumer._revoked_at = None


def resume(consumer: KafkaConsumer, tp: TopicPartition) -> None:
    """Resume a paused partition so that it is fetched again.

    kafka-python 3.0.12 parks the records a paused partition had fetched but not handed out, and gives them back
    only while it holds no other partition's records (after any other fetch: never); a parked partition is left
    out of every fetch, so it never delivers again. Seen here: a throttled host's partition with 509 records
    behind it stuck for good after its pause. The parked records are dropped (the worker sought the partition
    back before pausing it, so they would be skipped anyway) and the partition is fetched from its position.
    """
    consumer.resume(tp)
    parked = getattr(getattr(consumer, "_fetcher", None), "_paused_partition_records", None)
    if isinstance(parked, dict) and (records := parked.pop(tp, None)) is not None:
        records.drain()


def send_all(producer: KafkaProducer, emits: Iterable[Emit], timeout: float = 30.0) -> None:
    """Produce and wait for every acknowledgement; raises if any message was not stored."""
    futures = [
        producer.send(
            e.topic,
            key=e.key.encode(),
            value=e.message.SerializeToString(),
            headers=[(TYPE_HEADER, e.message.DESCRIPTOR.full_name.encode())],
        )
        for e in emits
    ]
    producer.flush(timeout=timeout)
    for future in futures:
        future.get(timeout=timeout)
