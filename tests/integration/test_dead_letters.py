"""Poison messages land on the dead-letter topic with their reason, and the workers keep going."""

from __future__ import annotations

import time

import httpx
from pipeline_helpers import submit, unique_job, wait_done

from taxonstream.core.bus import TYPE_HEADER
from taxonstream.v1.messages_pb2 import DeadLetter, Job, Outcome
from tools.stack import local_stack as stack


def test_garbage_and_wrong_types_are_dead_lettered_and_work_goes_on(bus, fetcher, site):
    topics = bus.topics
    tag = unique_job("poison")
    sources = {topics.records: "fetcher", topics.fetched: "checksummer", topics.cropped: "embedder"}
    dlqs = [topics.dlq(t) for t in sources]
    reader = bus.reader(dlqs)
    reader.seek_to_end()
    for tp in reader.assignment():
        reader.position(tp)  # resolve "end" now, before the poison is produced

    producer = bus.producer()
    for topic in sources:
        producer.send(topic, key=f"{tag}-garbage".encode(), value=b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")
        job = Job(job_id=tag, total=1).SerializeToString()
        producer.send(topic, key=f"{tag}-declared".encode(), value=job, headers=[(TYPE_HEADER, b"taxonstream.v1.Job")])
        outcome = Outcome(record_id="x", state=Outcome.FAILED, at_ms=1).SerializeToString()
        producer.send(topic, key=f"{tag}-undeclared".encode(), value=outcome)
    producer.flush()

    letters: dict[tuple[str, str], DeadLetter] = {}
    deadline = time.monotonic() + 120
    while len(letters) < 9 and time.monotonic() < deadline:
        for part in reader.poll(timeout_ms=500).values():
            for raw in part:
                letter = DeadLetter.FromString(raw.value)
                if letter.key.decode().startswith(tag):
                    letters[(letter.topic, letter.key.decode().removeprefix(tag + "-"))] = letter
    reader.close()

    assert len(letters) == 9, sorted(letters)
    for (topic, kind), letter in letters.items():
        assert letter.stage == sources[topic]
        expected = {
            "garbage": ("undecodable", "wrong_type"),
            "declared": ("wrong_type",),
            "undeclared": ("wrong_type", "undecodable"),
        }[kind]
        assert letter.reason.split(":")[0] in expected, letter.reason
        assert letter.value, "the original bytes are kept for inspection"

    # The workers moved on: a real job behind the poison still goes through every stage.
    images = site.images(3)
    job_id = unique_job("after-poison")
    submit(fetcher, job_id, [site.url("img", image) for image in images])
    assert wait_done(fetcher, job_id, timeout=300).indexed == 3


def test_dead_letters_are_counted_on_the_metrics_port(bus):
    """Each service serves Prometheus metrics on its own port; poison shows up there by stage and reason."""
    producer = bus.producer()
    producer.send(bus.topics.verified, key=b"metrics-poison", value=b"\xff\xff\xff\xff")
    producer.flush()
    detector = next(s for s in stack.SERVICES if s.name == "detector")
    deadline = time.monotonic() + 60
    while True:
        text = httpx.get(f"http://127.0.0.1:{detector.metrics_port}/metrics", timeout=10).text
        counted = [line for line in text.splitlines() if line.startswith("taxonstream_dead_letters_total{")]
        if any('stage="detector"' in line and not line.endswith(" 0.0") for line in counted):
            break
        assert time.monotonic() < deadline, f"no dead letter counted by the detector: {counted}"
        time.sleep(0.5)
    assert "taxonstream_batch_seconds_bucket" in text
