"""A provider that answers `429 Retry-After: 700` holds only its own partition: no image is lost, the group does
not rebalance, and other hosts' records complete while it waits; past the wait budget a record fails
`provider_throttled`.

A second fetcher runs with its own topic prefix (its own topics and group: the shared stack is not touched)
and test settings that make the 700 s fit the test: Retry-After capped at 12 s (as the default caps it at
300 s), deferred after 2 s, a 20 s wait budget. Three providers on three loopback addresses chosen to land in
three different partitions of its records topic: one throttles each image once, one never throttles, one
always does. Kafka 2.3's DescribeGroups carries no generation id, so "no rebalance" is read as what one
would cause here: the member that leaves on an overrun poll interval rejoins under a new member id.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.partitioner.default import murmur2
from pipeline_helpers import extra_replica, outcomes, submit, unique_job, wait_until

from taxonstream.core.bus import Bus, decode, resume
from taxonstream.core.channels import open_channel
from taxonstream.v1 import fetcher_pb2_grpc
from taxonstream.v1.messages_pb2 import FetchedImage, Outcome

RETRY_AFTER_CAP = 12.0
WAIT_BUDGET = 20.0  # the once-throttled image waits 12 s (fits); the always-throttled one would need 24 s
IMAGES = 3  # per provider


class Provider(http.server.BaseHTTPRequestHandler):
    """Images from `directory`; `mode` says when to answer 429 with `Retry-After: 700` instead."""

    def __init__(self, *args, directory: Path, mode: str, seen: dict[str, int], lock: threading.Lock, **kw) -> None:
        self.directory, self.mode, self.seen, self.lock = directory, mode, seen, lock
        super().__init__(*args, **kw)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        with self.lock:
            self.seen[self.path] = asked = self.seen.get(self.path, 0) + 1
        file = self.directory / self.path.strip("/").partition("/")[2]  # /<mode>/<path under the site>
        throttle = self.mode == "always" or (self.mode == "once" and asked == 1)
        if self.path == "/robots.txt" or not file.is_file():
            self._send(404, b"not found", "text/plain")
        elif throttle:
            self._send(429, b"slow down", "text/plain", {"Retry-After": "700"})
        else:
            self._send(200, file.read_bytes(), "image/jpeg")

    def _send(self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _addresses(partitions: int, count: int) -> list[str]:
    """Loopback addresses whose host names fall in `count` different partitions (records are keyed by host)."""
    chosen: dict[int, str] = {}
    for last in range(2, 250):
        address = f"127.0.0.{last}"
        chosen.setdefault((murmur2(address.encode()) & 0x7FFFFFFF) % partitions, address)
        if len(chosen) == count:
            return list(chosen.values())
    raise AssertionError("no loopback addresses in distinct partitions")


@pytest.fixture(scope="module")
def prefix() -> str:
    return unique_job("deferral").replace("-", "") + "."


@pytest.fixture(scope="module")
def deferring_fetcher(local_stack, settings, prefix, tmp_path_factory) -> Iterator[tuple[int, Path]]:
    log = tmp_path_factory.mktemp("deferral") / "fetcher.log"
    env = {
        "TAXONSTREAM_TOPIC_PREFIX": prefix,
        "TAXONSTREAM_FETCH_ALLOW_NETWORKS": "127.0.0.0/8",
        "TAXONSTREAM_FETCH_MAX_RETRY_AFTER": str(RETRY_AFTER_CAP),
        "TAXONSTREAM_FETCH_DEFER_AFTER": "2",
        "TAXONSTREAM_FETCH_WAIT_BUDGET": str(WAIT_BUDGET),
    }
    with extra_replica("fetcher", log, env) as fetcher:
        yield fetcher.port, fetcher.log


def _members(admin: KafkaAdminClient, group: str) -> tuple[str, set[str]]:
    described = admin.describe_groups([group])[group]  # kafka-python 3: {group_id: {field: value}}
    return described.get("group_state", described.get("state")), {m["member_id"] for m in described["members"]}


def test_a_700_s_retry_after_holds_only_its_partition(deferring_fetcher, settings, site, prefix) -> None:
    port, log_path = deferring_fetcher
    bus = Bus(settings.model_copy(update={"topic_prefix": prefix}))
    once, plain, always = _addresses(settings.topic_partitions, 3)
    lock, seen = threading.Lock(), {"once": {}, "plain": {}, "always": {}}
    servers, urls = [], {}
    for address, mode in ((once, "once"), (plain, "plain"), (always, "always")):
        handler = functools.partial(Provider, directory=site.directory, mode=mode, seen=seen[mode], lock=lock)
        server = http.server.ThreadingHTTPServer((address, 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        base = f"http://{address}:{server.server_address[1]}/{mode}"
        urls[mode] = [f"{base}/{p.relative_to(site.directory).as_posix()}" for p in site.images(IMAGES)]
    admin = KafkaAdminClient(bootstrap_servers=bus.bootstrap)
    fetched = bus.reader([bus.topics.fetched])
    got: set[str] = set()

    def collect() -> set[str]:
        for part in fetched.poll(timeout_ms=200).values():
            got.update(decode(raw.value, raw.headers, FetchedImage).record.url for raw in part)
        return got

    try:
        with open_channel(f"127.0.0.1:{port}") as channel:
            stub = fetcher_pb2_grpc.FetcherStub(channel)
            group = bus.topics.name("fetcher")
            wait_until(lambda: _members(admin, group)[0] == "Stable", "the fetcher's group stable", 60)
            state, members = _members(admin, group)

            slow_job = unique_job("throttled")
            submit(stub, slow_job, urls["once"] + urls["always"])
            # Its host's other records may never be sent before the pause ends: one 429 per host is the start.
            wait_until(lambda: seen["once"] and seen["always"], "the first 429s", 60)

            fast_job = unique_job("meanwhile")
            submit(stub, fast_job, urls["plain"])
            wait_until(lambda: set(urls["plain"]) <= collect(), "the other host's images", 60)
            with lock:
                asked_again = [n for n in seen["once"].values() if n > 1]
            assert asked_again == [], "the other host's images were done while the throttled host still waited"
            assert not set(urls["once"]) & got

            wait_until(lambda: set(urls["once"]) <= collect(), "the throttled host's images, after its pause", 90)
            wait_until(lambda: len(outcomes(stub, slow_job)) >= IMAGES, "the always-throttled records ended", 90)
            throttled = outcomes(stub, slow_job)  # the fetched ones have no outcome: nothing runs downstream
        assert {o.state for o in throttled.values()} == {Outcome.FAILED}
        assert {o.reason for o in throttled.values()} == {"provider_throttled"}
        assert {o.url for o in throttled.values()} == set(urls["always"])
        assert not set(urls["always"]) & got, "an image never served is not fetched"
        assert all(n <= 2 for n in seen["once"].values()), "one 429 at most per image, then the image"
        assert _members(admin, group) == (state, members), "the same member throughout: no rebalance"
        assert "background loop died" not in log_path.read_text()
    finally:
        fetched.close(autocommit=False)
        admin.close()
        for server in servers:
            server.shutdown()
            server.server_close()


def test_a_partition_paused_with_records_in_hand_delivers_again_once_resumed(settings, prefix) -> None:
    """kafka-python 3.0.12 parks a paused partition's undelivered records and, once the consumer has fetched
    another partition, never hands them back nor fetches that partition again; `bus.resume` undoes the parking."""
    bus = Bus(settings.model_copy(update={"topic_prefix": prefix}))
    topic = f"{prefix}parked"
    admin = KafkaAdminClient(bootstrap_servers=bus.bootstrap)
    admin.create_topics([NewTopic(topic, 2, 1)])
    producer = bus.producer()
    consumer = bus.group_consumer(f"{prefix}parked", [topic], 4)  # 4 a poll: 20 a partition stay in hand
    try:
        for n in range(20):
            for partition in (0, 1):
                producer.send(topic, value=f"{partition}-{n}".encode(), partition=partition)
        producer.flush()
        first: list = []
        wait_until(
            lambda: first.extend(r for p in consumer.poll(timeout_ms=300).values() for r in p) or first, "a poll"
        )
        held = TopicPartition(topic, first[0].partition)
        consumer.seek(held, first[0].offset)  # what the worker does with a deferred message
        consumer.pause(held)
        others = [r for _ in range(8) for p in consumer.poll(timeout_ms=300).values() for r in p]
        assert others and {r.partition for r in others} == {1 - held.partition}, "the other partition flows"
        resume(consumer, held)
        again: list[int] = []

        def delivered() -> bool:
            again.extend(
                r.offset for p in consumer.poll(timeout_ms=300).values() for r in p if r.partition == held.partition
            )
            return bool(again)

        wait_until(delivered, "the resumed partition's records", 30)
        assert again[0] == first[0].offset, "from the message it was held at: nothing skipped"
    finally:
        consumer.close(autocommit=False)
        producer.close(timeout=5)
        admin.delete_topics([topic])
        admin.close()
