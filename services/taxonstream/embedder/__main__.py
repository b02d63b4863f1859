"""`python -m taxonstream.embedder`: the embed API and the workers cropped → embedded and reembed → embedded."""

from __future__ import annotations

from taxonstream.core.server import Service, connect, registrar, run
from taxonstream.core.worker import StreamWorker, in_batches
from taxonstream.embedder.servicer import EmbedderServicer
from taxonstream.embedder.worker import REEMBED_STAGE, STAGE, EmbedderSettings, EmbedWorker, Encoders
from taxonstream.v1 import embedder_pb2, embedder_pb2_grpc
from taxonstream.v1.messages_pb2 import Crop, ReembedImage


def build(settings: EmbedderSettings) -> Service:
    bus, store = connect(settings)
    encoders = Encoders(settings)
    work = EmbedWorker(settings, bus, store, encoders)
    fresh = StreamWorker(
        stage=STAGE,
        bus=bus,
        source=bus.topics.cropped,
        message_type=Crop,
        process=in_batches(
            work.prepare,
            work.run,
            work.finish,
            concurrency=settings.stage_concurrency,
            pixels=work.crop_pixels,
            pixel_budget=settings.batch_pixel_budget,
        ),
        max_batch=settings.max_batch,
        prefetch=settings.prefetch_next_batch,
    )
    backfill = StreamWorker(
        stage=REEMBED_STAGE,
        bus=bus,
        source=bus.topics.reembed,
        message_type=ReembedImage,
        process=in_batches(
            work.prepare_backfill, work.run_backfill, work.finish_backfill, concurrency=settings.stage_concurrency
        ),
        max_batch=settings.max_batch,
        prefetch=settings.prefetch_next_batch,
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
