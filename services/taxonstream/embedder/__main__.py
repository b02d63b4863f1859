"""`python -m taxonstream.embedder`: the embed API and the workers cropped → embedded and reembed → embedded."""

from __future__ import annotations

from taxonstream.core.server import Service, connect, registrar, run
from taxonstream.core.worker import model_stage
from taxonstream.embedder.servicer import EmbedderServicer
from taxonstream.embedder.worker import REEMBED_STAGE, STAGE, EmbedderSettings, EmbedWorker, Encoders
from taxonstream.v1 import embedder_pb2, embedder_pb2_grpc
from taxonstream.v1.messages_pb2 import Crop, ReembedImage


def build(settings: EmbedderSettings) -> Service:
    bus, store = connect(settings)
    encoders = Encoders(settings)
    work = EmbedWorker(settings, bus, store, encoders)
    fresh = model_stage(
        settings, bus, STAGE, bus.topics.cropped, Crop, work.prepare, work.run, work.finish, work.crop_pixels
    )
    backfill = model_stage(
        settings,
        bus,
        REEMBED_STAGE,
        bus.topics.reembed,
        ReembedImage,
        work.prepare_backfill,
        work.run_backfill,
        work.finish_backfill,
    )
    return Service(
        name=STAGE,
        register=registrar(
            embedder_pb2, "Embedder", embedder_pb2_grpc.add_EmbedderServicer_to_server, EmbedderServicer(encoders)
        ),
        loops=[fresh.run, backfill.run],
    )


if __name__ == "__main__":
    run(STAGE, EmbedderSettings, build)
