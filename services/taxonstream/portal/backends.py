"""The portal's gRPC clients of the five services, and what their errors mean to a person."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from taxonstream.core.channels import service_channel
from taxonstream.core.settings import SERVICE_PORTS
from taxonstream.v1 import fetcher_pb2_grpc, indexer_pb2, indexer_pb2_grpc
from taxonstream.v1.indexer_pb2 import Hit

from .settings import PortalSettings

# Listings with vectors and uploaded images travel in large messages.
MESSAGE_BYTES = 64 << 20

# gRPC status -> (HTTP status, what to call it); anything else is a 502 from the service.
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
}


@dataclass(frozen=True)
class ServiceError(Exception):
    """A service's answer as the page shows it: one line, an HTTP status."""

    service: str
    status: int
    message: str

    def __str__(self) -> str:
        return self.message


def service_error(service: str, address: str, error: grpc.RpcError) -> ServiceError:
    code = error.code()
    status = _HTTP_STATUS.get(code, 502)
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServiceError(service, status, f"the {service} at {address} is not reachable; try again when it is up")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ServiceError(service, status, f"the {service} at {address} did not answer in time")
    return ServiceError(service, status, f"{service}: {error.details() or code.name.lower()}")


class Backends:
    """One channel per service for the portal's lifetime (gRPC channels are thread-safe and reconnect).

    The channels carry the deployment's credentials (TAXONSTREAM_TOKEN, TLS with TAXONSTREAM_TLS_CA), made
    by the same core code as the CLI's and the services' own.
    """

    def __init__(self, settings: PortalSettings) -> None:
        self.settings = settings
        options = [("grpc.max_receive_message_length", MESSAGE_BYTES), ("grpc.max_send_message_length", MESSAGE_BYTES)]
        self._channels = {name: service_channel(settings, self.address(name), options) for name in SERVICE_PORTS}
        self.indexer = indexer_pb2_grpc.IndexerStub(self._channels["indexer"])
        self.fetcher = fetcher_pb2_grpc.FetcherStub(self._channels["fetcher"])
        self._listing_lock = threading.Lock()
        self._listings: dict[tuple, tuple[float, list[Hit]]] = {}

    def address(self, service: str) -> str:
        return self.settings.address(service)

    def call(self, service: str, method: Callable, request, timeout: float = 60.0):
        """One unary call; a gRPC error becomes a ServiceError the page can show."""
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as error:
            raise service_error(service, self.address(service), error) from None

    def health(self, timeout: float = 1.0) -> dict[str, bool]:
        """Each service's gRPC health check (the header's status strip)."""
        found = {}
        for name, channel in self._channels.items():
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
                found[name] = answer.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                found[name] = False
        return found

    def list_images(self, filters: tuple = (), with_vectors: bool = False, job_id: str = "") -> list[Hit]:
        """The indexed images (at most `listing_limit`), reused for `listing_ttl_seconds`.

        The dashboard asks the same listing again on every control change; 10,000 hits cost ~1 s to stream.
        """
        key = (filters, with_vectors, job_id)
        now = time.monotonic()
        with self._listing_lock:
            cached = self._listings.get(key)
            if cached and now - cached[0] < self.settings.listing_ttl_seconds:
                return cached[1]
        request = indexer_pb2.ListImagesRequest(
            job_id=job_id,
            filters=[indexer_pb2.Filter(field=f, values=list(v)) for f, v in filters],
            with_vectors=with_vectors,
        )
        hits: list[Hit] = []
        try:
            for hit in self.indexer.ListImages(request, timeout=300):
                hits.append(hit)
                if len(hits) >= self.settings.listing_limit:
                    break
        except grpc.RpcError as error:
            raise service_error("indexer", self.address("indexer"), error) from None
        with self._listing_lock:
            # Only the latest few listings are kept: vectors of 20,000 images are ~40 MB each.
            for stale in [k for k, (at, _) in self._listings.items() if now - at >= self.settings.listing_ttl_seconds]:
                del self._listings[stale]
            while len(self._listings) >= 4:
                del self._listings[min(self._listings, key=lambda k: self._listings[k][0])]
            self._listings[key] = (now, hits)
        return hits

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
