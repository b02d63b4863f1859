"""Settings from environment variables (prefix TAXONSTREAM_), frozen once read.

Every service subclasses `CoreSettings` with the few fields of its own, so one deployment's
environment configures all five the same way.
"""

from __future__ import annotations

from typing import NamedTuple

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Ports(NamedTuple):
    grpc: int
    metrics: int


# The one place for the five services' default ports: their settings, the local stack and the CLI read
# them here. They sit below the kernel's ephemeral range (32768–60999): there, any outgoing
# connection could hold one.
SERVICE_PORTS: dict[str, Ports] = {
    "fetcher": Ports(24061, 9161),
    "checksummer": Ports(24062, 9162),
    "detector": Ports(24063, 9163),
    "embedder": Ports(24064, 9164),
    "indexer": Ports(24065, 9165),
}


# The explorer portal (HTTP, not gRPC): pages, its JSON, /healthz and /metrics all on this one port.
PORTAL_HTTP_PORT = 24080


def loopback_address(service: str) -> str:
    return f"127.0.0.1:{SERVICE_PORTS[service].grpc}"


class CoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TAXONSTREAM_", frozen=True, extra="ignore")

    # Loopback by default: a pod sets 0.0.0.0 explicitly.
    bind_host: str = "127.0.0.1"
    grpc_port: int = 50051
    metrics_port: int = 9090
    log_level: str = "INFO"
    # Seconds a SIGTERM'd pod gets to finish its batch and in-flight RPCs.
    drain_seconds: float = 20.0

    kafka_bootstrap: str = "127.0.0.1:29092"
    topic_prefix: str = "taxonstream."
    topic_partitions: int = Field(default=4, ge=1)
    # 1 suits a single broker (the local stack); a production cluster wants 3.
    topic_replication: int = Field(default=1, ge=1)
    # Messages taken per poll; the batch's work must stay well under the poll interval.
    max_batch: int = Field(default=32, ge=1)
    # Messages of a batch prepared/finished at once (their S3 round trips and image work overlap). Most of
    # a message's time is waiting on S3, so 8 keeps 2 cores busy; a pod with more cores can raise it.
    stage_concurrency: int = Field(default=8, ge=1)
    # Poll the next batch and start its S3 reads while the model runs on this one (False: one at a time).
    prefetch_next_batch: bool = True
    # Decoded pixels per model sub-batch: 32 photos of 100 MP would be ~10 GB of RGB; this keeps a
    # sub-batch near 100 MB, and at most three of them are in memory at once (running, next, prefetched).
    batch_pixel_budget: int = Field(default=32_000_000, ge=1)

    s3_endpoint: str = "127.0.0.1:27480"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    s3_bucket: str = "taxonstream"
    # Originals and derivatives (never listed); empty: the same bucket. The local stack's is indexless.
    s3_blob_bucket: str = ""
    # Parallel S3 requests of one get_many/put_many (and HTTP connections kept): round trips, not CPU.
    s3_concurrency: int = Field(default=16, ge=1)

    triton_url: str = "127.0.0.1:28001"
    detector_addr: str = loopback_address("detector")
    embedder_addr: str = loopback_address("embedder")

    # Who may call (core/server.py AuthInterceptor): the bearer token every state-changing RPC must carry, and
    # the one this service sends on its own calls; empty = no check, allowed only on a loopback bind (or with
    # `insecure`).
    token: SecretStr = SecretStr("")
    # Require the token for reads too (search, stats, listings); health checks never need it (probes).
    auth_reads: bool = False
    # Listen on a non-loopback address without a token: only where something else fences the port.
    insecure: bool = False
    # PEM files: this server's certificate and key (TLS on when both are set), and the CA its own calls
    # to the other services verify them with (TLS on for those calls when set).
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    # A second, plaintext port serving only the health check (0: none), for probes that cannot speak TLS.
    health_port: int = Field(default=0, ge=0)
