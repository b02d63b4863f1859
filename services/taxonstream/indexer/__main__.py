"""`python -m taxonstream.indexer`: the index API and one replica worker per index version (embedded → index)."""

from __future__ import annotations

from taxonstream.core.server import Service, connect, registrar, run
from taxonstream.index.versions import Registry, VersionKey, Versions
from taxonstream.indexer.servicer import IndexerServicer
from taxonstream.indexer.worker import STAGE, IndexerSettings, IndexWorker
from taxonstream.v1 import (
    indexer_pb2,
    indexer_pb2_grpc,
)


def build(settings: IndexerSettings) -> Service:
    bus, store = connect(settings)
    backend = settings.index_config().backend
    default = VersionKey(settings.index_model, settings.index_model_version)
    versions: Versions[IndexWorker] = Versions(
        Registry(store, backend, default),
        bus.topics.embedded,
        make=lambda key, offsets: IndexWorker(settings, bus, store, key, offsets),
        loop=lambda work: work.worker().run,
    )

    def snapshot_all() -> None:
        for _, work in versions.items():
            work.snapshot()

    # Ready once the serving version holds everything the topic held at start (snapshot + replay).
    replay_to = bus.end_offsets(bus.topics.embedded)

    def ready() -> bool:
        serving = versions.get()
        return serving is not None and serving.caught_up(replay_to)

    return Service(
        name=STAGE,
        register=registrar(
            indexer_pb2,
            "Indexer",
            indexer_pb2_grpc.add_IndexerServicer_to_server,
            IndexerServicer(settings, versions, bus, store),
        ),
        loops=[versions.run],
        on_stop=snapshot_all,
        ready=ready,
    )


if __name__ == "__main__":
    run(STAGE, IndexerSettings, build)
