"""`python -m taxonstream.fetcher`: the job API and the download worker (records → fetched)."""

from __future__ import annotations

from taxonstream.core.server import Service, connect, registrar, run
from taxonstream.fetcher.jobs import JobFollower, JobTable
from taxonstream.fetcher.servicer import FetcherServicer
from taxonstream.fetcher.worker import STAGE, FetchWorker
from taxonstream.fetching.settings import FetcherSettings
from taxonstream.v1 import fetcher_pb2, fetcher_pb2_grpc


def build(settings: FetcherSettings) -> Service:
    bus, store = connect(settings)
    jobs = JobTable()
    fetch = FetchWorker(settings, bus, store, jobs)
    servicer = FetcherServicer(bus, jobs, store)
    # Counters restored from the S3 snapshot, then both topics replayed from its offsets.
    follower = JobFollower(bus, store, jobs)

    return Service(
        name=STAGE,
        register=registrar(fetcher_pb2, "Fetcher", fetcher_pb2_grpc.add_FetcherServicer_to_server, servicer),
        loops=[follower.run, fetch.worker().run],
        on_stop=fetch.downloader.close,
        ready=follower.caught_up,  # no answers from a table still replaying (stale progress)
    )


if __name__ == "__main__":
    run(STAGE, FetcherSettings, build)
