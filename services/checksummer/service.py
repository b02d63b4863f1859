"""Checksummer service: digests over gRPC, and the worker fetched → verified | duplicate."""

from __future__ import annotations

import hashlib

import grpc

from taxonstream.core.bus import Bus, Emit
from taxonstream.core.errors import Failed
from taxonstream.core.outcomes import outcome
from taxonstream.core.server import Service, connect, registrar
from taxonstream.core.settings import CoreSettings
from taxonstream.core.store import ObjectStore
from taxonstream.core.worker import StreamWorker, each
from taxonstream.v1 import checksummer_pb2, checksummer_pb2_grpc
from taxonstream.v1.messages_pb2 import FetchedImage, Outcome, VerifiedImage

STAGE = "checksummer"


class ChecksummerSettings(CoreSettings):
    grpc_port: int = 50062
    metrics_port: int = 9162


def registry_key(sha256: str) -> str:
    return f"registry/sha256/{sha256[:2]}/{sha256}.json"


def provenance_prefix(image_id: str) -> str:
    return f"provenance/{image_id}/"


def digests(data: bytes, algorithms: list[str]) -> dict[str, str]:
    result = {}
    for name in algorithms:
        try:
            digest = hashlib.new(name, data)
        except ValueError as error:
            raise ValueError(f"unknown hash algorithm {name!r}") from error
        # shake_* need a length; 32 bytes matches sha256's strength.
        result[name] = digest.hexdigest(32) if name.startswith("shake_") else digest.hexdigest()  # type: ignore[call-arg]
    return result


class Registry:
    """Which record first brought each content hash. Lives in S3, so a restart keeps it.

    Messages are keyed by sha256, so one consumer owns a hash at a time: check-then-write is safe.
    """

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def claim(self, fetched: FetchedImage) -> str | None:
        """Register these bytes for this record; returns the image they duplicate, or None if they are new."""
        key = registry_key(fetched.sha256)
        entry = self.store.get_json(key)
        record = fetched.record
        if entry is None:
            self.store.put_json(key, {"image_id": fetched.sha256, "record_id": record.record_id})
            entry = {"image_id": fetched.sha256, "record_id": record.record_id}
        self.store.put_json(
            provenance_prefix(entry["image_id"]) + record.record_id + ".json",
            {
                "record_id": record.record_id,
                "job_id": record.job_id,
                "url": record.url,
                "metadata": dict(record.metadata),
            },
        )
        # The same record re-delivered is still the claimant, not a duplicate of itself.
        return None if entry["record_id"] == record.record_id else entry["image_id"]

    def sources(self, sha256: str) -> tuple[str, list[str]]:
        entry = self.store.get_json(registry_key(sha256))
        if entry is None:
            return "", []
        keys = self.store.list(provenance_prefix(entry["image_id"]))
        return entry["image_id"], sorted(k.rsplit("/", 1)[-1].removesuffix(".json") for k in keys)


class ChecksumWorker:
    def __init__(self, bus: Bus, store: ObjectStore) -> None:
        self.bus = bus
        self.store = store
        self.registry = Registry(store)

    def handle(self, fetched: FetchedImage) -> list[Emit]:
        try:
            data = self.store.get(fetched.object_key)
        except KeyError:
            raise Failed("missing_object", f"original {fetched.object_key} is not in the store") from None
        actual = digests(data, ["sha256", "md5"])
        if actual["sha256"] != fetched.sha256:
            raise Failed("checksum_mismatch", f"stored bytes hash to {actual['sha256']}, expected {fetched.sha256}")
        duplicate_of = self.registry.claim(fetched)
        if duplicate_of is not None:
            return [outcome(self.bus.topics, fetched.record, Outcome.DUPLICATE, stage=STAGE, image_id=duplicate_of)]
        verified = VerifiedImage(image_id=fetched.sha256, fetched=fetched, md5=actual["md5"])
        return [Emit(self.bus.topics.verified, verified.image_id, verified)]


class ChecksummerServicer(checksummer_pb2_grpc.ChecksummerServicer):
    def __init__(self, store: ObjectStore, registry: Registry) -> None:
        self.store = store
        self.registry = registry

    def Checksum(self, request, context) -> checksummer_pb2.ChecksumResponse:
        if request.HasField("object_key"):
            try:
                data = self.store.get(request.object_key)
            except KeyError:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no object {request.object_key!r}")
        else:
            data = request.data
        try:
            values = digests(data, list(request.algorithms) or ["md5", "sha256"])
        except ValueError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return checksummer_pb2.ChecksumResponse(digests=values, size_bytes=len(data))

    def FindDuplicates(self, request, context) -> checksummer_pb2.FindDuplicatesResponse:
        image_id, records = self.registry.sources(request.sha256.lower())
        return checksummer_pb2.FindDuplicatesResponse(image_id=image_id, record_ids=records)


def build(settings: ChecksummerSettings) -> Service:
    bus, store = connect(settings)
    work = ChecksumWorker(bus, store)
    worker = StreamWorker(
        stage=STAGE,
        bus=bus,
        source=bus.topics.fetched,
        message_type=FetchedImage,
        process=each(work.handle),  # one at a time: claims must not race
        max_batch=settings.max_batch,
    )
    servicer = ChecksummerServicer(store, work.registry)

    return Service(
        name=STAGE,
        register=registrar(
            checksummer_pb2, "Checksummer", checksummer_pb2_grpc.add_ChecksummerServicer_to_server, servicer
        ),
        loops=[worker.run],
    )
