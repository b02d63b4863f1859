"""Readers never silently skip: a start position retention deleted is read from the earliest kept (with a
warning) or refused, never kafka-python's default `latest`. A stand-in consumer plays the broker's offsets."""

from __future__ import annotations

import logging

import pytest
from kafka import TopicPartition

from taxonstream.core import bus as bus_module
from taxonstream.core.bus import Bus, OffsetsLost, start_positions
from taxonstream.core.settings import CoreSettings

TOPIC = "taxonstream.embedded"
P0, P1, P2 = (TopicPartition(TOPIC, p) for p in range(3))
# What the stand-in broker still holds per partition: [earliest, end).
EARLIEST = {P0: 100, P1: 0, P2: 50}
END = {P0: 400, P1: 30, P2: 80}


class FakeConsumer:
    """The few KafkaConsumer calls `Bus.reader` makes, against fixed offsets."""

    made: list[FakeConsumer] = []

    def __init__(self, **config) -> None:
        self.config = config
        self.seeks: dict[TopicPartition, int | str] = {}
        self.closed = False
        FakeConsumer.made.append(self)

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def assign(self, partitions) -> None:
        self.assigned = list(partitions)

    def beginning_offsets(self, partitions):
        return {tp: EARLIEST[tp] for tp in partitions}

    def end_offsets(self, partitions):
        return {tp: END[tp] for tp in partitions}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.seeks[tp] = "beginning"

    def close(self, autocommit: bool = True) -> None:
        self.closed = True


@pytest.fixture
def bus(monkeypatch) -> Bus:
    FakeConsumer.made.clear()
    monkeypatch.setattr(bus_module, "KafkaConsumer", FakeConsumer)
    return Bus(CoreSettings())


def test_positions_inside_the_partition_are_kept_and_gone_ones_reported():
    start = {P0: 40, P1: 30, P2: 90}  # P0 deleted below 100; P1 at its end (nothing new); P2 past its end
    positions, gaps = start_positions([P0, P1, P2], start, EARLIEST, END)
    assert positions == {P0: None, P1: 30, P2: None}
    assert [(g.partition, g.wanted) for g in gaps] == [(P0, 40), (P2, 90)]
    assert "60 messages deleted before offset 100" in gaps[0].describe()
    assert "ends at 80" in gaps[1].describe()


def test_no_start_reads_every_partition_from_its_beginning():
    positions, gaps = start_positions([P0, P1], None, {}, {})
    assert positions == {P0: None, P1: None} and gaps == []


def test_reader_never_uses_latest(bus):
    bus.reader([TOPIC])
    bus.reader([TOPIC], {P0: 150}, on_gap="refuse")
    assert [c.config["auto_offset_reset"] for c in FakeConsumer.made] == ["earliest", "none"]


def test_reader_seeks_kept_positions_and_warns_for_gone_ones(bus, caplog):
    with caplog.at_level(logging.WARNING, logger="taxonstream.core.bus"):
        consumer = bus.reader([TOPIC], {P0: 40, P1: 10, P2: 60})
    assert consumer.seeks == {P0: "beginning", P1: 10, P2: 60}
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.gaps == [f"{TOPIC}[0] from 40: 60 messages deleted before offset 100"]


def test_reader_that_must_not_skip_refuses_and_closes(bus):
    with pytest.raises(OffsetsLost, match=r"refusing to start.*embedded\[0\] from 40: 60 messages deleted"):
        bus.reader([TOPIC], {P0: 40, P1: 10}, on_gap="refuse")
    (consumer,) = FakeConsumer.made
    assert consumer.closed and consumer.seeks == {}


def test_reader_that_must_not_skip_starts_when_nothing_is_gone(bus):
    consumer = bus.reader([TOPIC], {P0: 100, P1: 30}, on_gap="refuse")
    assert consumer.seeks == {P0: 100, P1: 30, P2: "beginning"}
