"""`python -m taxonstream.checksummer`: the checksum API, the worker fetched → verified | duplicate, the observer."""

from __future__ import annotations

from taxonstream.checksummer.servicer import ChecksummerServicer
from taxonstream.checksummer.worker import STAGE, ChecksummerSettings, ChecksumWorker, ReplicaObserver
from taxonstream.core.server import Service, connect, registrar, run
from taxonstream.core.worker import StreamWorker
from taxonstream.v1 import checksummer_pb2, checksummer_pb2_grpc
from taxonstream.v1.messages_pb2 import FetchedImage


def build(settings: ChecksummerSettings) -> Service:
    bus, store = connect(settings)
    start = bus.end_offsets(bus.topics.verified)  # before the registry loads: see ReplicaObserver
    work = ChecksumWorker(settings, bus, store)
    observer = ReplicaObserver(bus, work, start)
    worker = StreamWorker(
        stage=STAGE,
        bus=bus,
        source=bus.topics.fetched,
        message_type=FetchedImage,
        process=work.process,  # reads and hashes concurrently, then claims in order (they must not race)
        on_idle=work.snapshot,
        max_batch=settings.max_batch,
        prefetch=settings.prefetch_next_batch,
    )
    servicer = ChecksummerServicer(store, work.registry, work.lock)
    return Service(
        name=STAGE,
        register=registrar(
            checksummer_pb2, "Checksummer", checksummer_pb2_grpc.add_ChecksummerServicer_to_server, servicer
        ),
        loops=[worker.run, observer.run],
        on_stop=lambda: work.snapshot(force=True),
    )


if __name__ == "__main__":
    run(STAGE, ChecksummerSettings, build)
