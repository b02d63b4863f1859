"""Settings from environment variables (prefix TAXONSTREAM_), frozen once read.

Every service subclasses `CoreSettings` with the few fields of its own, so one deployment's
environment configures all five the same way.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    s3_endpoint: str = "127.0.0.1:27480"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    s3_bucket: str = "taxonstream"

    triton_url: str = "127.0.0.1:28001"
    detector_addr: str = "127.0.0.1:24063"
    embedder_addr: str = "127.0.0.1:24064"
