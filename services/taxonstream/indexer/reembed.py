"""Starting a new index version by re-embedding what the serving one holds with another model (Reembed RPC)."""

from __future__ import annotations

import io
import itertools
import logging
import time
from collections.abc import Callable

import grpc
from kafka import KafkaProducer
from PIL import Image

from taxonstream.core.bus import Bus, send_all
from taxonstream.core.errors import FailedPrecondition, InvalidArgument, Transient
from taxonstream.index.versions import VersionKey, Versions
from taxonstream.indexer.worker import IndexWorker
from taxonstream.v1 import embedder_pb2, embedder_pb2_grpc

log = logging.getLogger(__name__)
CATCH_UP_SECONDS = 120  # how long the serving version may take to index what the topic held at the request
REQUESTS_PER_SEND = 5000  # reembed requests produced at a time: bounded memory for a large index


def check_model(embedder: embedder_pb2_grpc.EmbedderStub, key: VersionKey) -> None:
    """The embedder embeds a probe image with the model (loading it on Triton if need be), or says why not."""
    probe = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 160, 90)).save(probe, format="PNG")
    request = embedder_pb2.EmbedImagesRequest(images=[probe.getvalue()], model=key.model, model_version=key.version)
    try:
        embedder.EmbedImages(request, timeout=120)
    except grpc.RpcError as error:
        message = (
            f"the embedder cannot run {key}: {error.details()} (install it into Triton's model repository "
            "first: taxonstream models install … --name NAME gives NAME_image)"
        )
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            raise Transient(message) from error
        raise FailedPrecondition(message) from error


def start_reembed(
    versions: Versions[IndexWorker],
    bus: Bus,
    producer: KafkaProducer,
    embedder: embedder_pb2_grpc.EmbedderStub,
    key: VersionKey,
    still_wanted: Callable[[], bool],
) -> tuple[int, bool]:
    """Adds index version `key` (if new) and asks the embedder for every image the serving version holds.

    Returns (images requested, whether the version is new). `still_wanted` false (the caller went away)
    stops the wait for the serving version to catch up.
    """
    serving = versions.get()
    if serving is None or key == serving.key:
        raise InvalidArgument(f"{key} is the serving index version already")
    check_model(embedder, key)
    # A new version starts where the topic ends now. Everything before must be in the serving index before
    # it is listed; everything after reaches the new version itself (IndexWorker._follow).
    ends = bus.end_offsets(bus.topics.embedded)
    work, created = versions.add(key, lambda: ends)
    deadline = time.monotonic() + CATCH_UP_SECONDS
    while not serving.caught_up(ends):
        if time.monotonic() > deadline or not still_wanted():
            raise Transient(f"the serving index {serving.key} is not catching up")
        time.sleep(0.2)
    requests = (
        work.reembed_request(image_id, metadata.get("crop_key", ""), metadata)
        for image_id, metadata in serving.index.images(None)
    )
    sent = 0
    while batch := list(itertools.islice(requests, REQUESTS_PER_SEND)):
        send_all(producer, batch)
        sent += len(batch)
    log.info("reembed requested", extra={"version": str(key), "images": sent, "new_version": created})
    return sent, created
