from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from taxonstream.core.settings import CoreSettings


class FetcherSettings(CoreSettings):
    grpc_port: int = 50061
    metrics_port: int = 9161
    # Comma-separated CIDRs that may be fetched even though they are private/loopback/link-local.
    fetch_allow_networks: str = ""
    fetch_user_agent: str = "taxonstream/0.1 (+https://github.com/taxonstream; biodiversity image collection)"
    fetch_connect_timeout: float = Field(default=5.0, gt=0)
    fetch_read_timeout: float = Field(default=10.0, gt=0)
    # Whole download, so a body trickling in just under the read timeout still ends.
    fetch_total_timeout: float = Field(default=60.0, gt=0)
    fetch_max_bytes: int = Field(default=50 << 20, gt=0)
    fetch_max_pixels: int = Field(default=200_000_000, gt=0)
    fetch_max_redirects: int = Field(default=5, ge=0)
    fetch_attempts: int = Field(default=3, ge=1)
    fetch_concurrency: int = Field(default=8, ge=1)

    @field_validator("fetch_allow_networks")
    @classmethod
    def _valid_networks(cls, value: str) -> str:
        for cidr in filter(None, (c.strip() for c in value.split(","))):
            ipaddress.ip_network(cidr, strict=False)
        return value

    def allowed_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        cidrs = [c.strip() for c in self.fetch_allow_networks.split(",")]
        return [ipaddress.ip_network(c, strict=False) for c in cidrs if c]
