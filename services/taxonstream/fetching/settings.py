from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from taxonstream.core.settings import SERVICE_PORTS, CoreSettings


class FetcherSettings(CoreSettings):
    grpc_port: int = SERVICE_PORTS["fetcher"].grpc
    metrics_port: int = SERVICE_PORTS["fetcher"].metrics
    # Comma-separated CIDRs that may be fetched even though they are private/loopback/link-local.
    fetch_allow_networks: str = ""
    # Identifiable, with a way to reach whoever runs the crawl (providers block anonymous floods).
    fetch_user_agent: str = "taxonstream/0.1 (+https://github.com/taxonstream; biodiversity image collection)"
    # Appended to the User-Agent as "; contact: …" — an e-mail address or URL a provider can write to.
    fetch_contact: str = ""
    fetch_connect_timeout: float = Field(default=5.0, gt=0)
    fetch_read_timeout: float = Field(default=10.0, gt=0)
    # Whole download, so a body trickling in just under the read timeout still ends.
    fetch_total_timeout: float = Field(default=60.0, gt=0)
    fetch_max_bytes: int = Field(default=50 << 20, gt=0)
    fetch_max_pixels: int = Field(default=200_000_000, gt=0)
    # Images smaller than this on either side fail as too_small (0: no minimum).
    fetch_min_width: int = Field(default=0, ge=0)
    fetch_min_height: int = Field(default=0, ge=0)
    fetch_max_redirects: int = Field(default=5, ge=0)
    # Attempts for failures another try may cure (timeouts, connection errors, 500/502/504).
    fetch_attempts: int = Field(default=3, ge=1)
    # Attempts when the host says "slow down" (429, 503): not the record's fault, so a larger budget.
    fetch_throttled_attempts: int = Field(default=10, ge=1)
    fetch_concurrency: int = Field(default=8, ge=1)
    # The engine (standalone `taxonstream fetch`): connections in flight overall and to one host.
    fetch_max_connections: int = Field(default=64, ge=1)
    fetch_max_connections_per_host: int = Field(default=8, ge=1)
    # Adaptive per-host request rate (requests/s): where an unknown host starts, and its bounds.
    fetch_initial_rate: float = Field(default=4.0, gt=0)
    fetch_min_rate: float = Field(default=0.1, gt=0)
    fetch_max_rate: float = Field(default=500.0, gt=0)
    # Multiplicative decrease on 429, 503, timeouts and connection errors.
    fetch_rate_decrease: float = Field(default=0.5, gt=0, lt=1)
    # Exponential backoff with jitter after consecutive failures of a host: base * 2^(n-1), capped.
    fetch_backoff_base: float = Field(default=0.5, gt=0)
    fetch_backoff_max: float = Field(default=60.0, gt=0)
    # The longest Retry-After honoured as asked; longer requests are cut to this.
    fetch_max_retry_after: float = Field(default=300.0, gt=0)
    # The service: a host's pause longer than this defers the record (its partition paused, the batch goes
    # on) instead of waiting inside the batch; a record deferred longer than the budget ends provider_throttled.
    fetch_defer_after: float = Field(default=30.0, ge=0)
    fetch_wait_budget: float = Field(default=1800.0, gt=0)
    # robots.txt: fetched once per host and obeyed (Disallow, Crawl-delay) when true.
    fetch_robots_txt: bool = False
    # X-Robots-Tag directives that opt an image out (read from the headers before the body).
    fetch_robots_tag_optout: str = "noai,noimageai"
    # Decode JPEGs at reduced scale when validating: every byte is still entropy-decoded (truncation and
    # corruption are caught) at a fraction of the CPU of a full-size decode.
    fetch_fast_decode: bool = True
    # The pipeline's fetcher carries originals up to this size in its `fetched` message besides storing
    # them, so the detector and embedder read them from Kafka, not S3: 2 GETs fewer a record (a 7 kB GET
    # costs Ceph 0.8-0.9 ms of CPU, tools/bench/s3; the e2e A/B showed no gain beyond its noise, README
    # there). 0: never. Kafka's default message limit is 1 MB.
    fetch_inline_max_bytes: int = Field(default=64 << 10, ge=0, le=512 << 10)

    @field_validator("fetch_allow_networks")
    @classmethod
    def _valid_networks(cls, value: str) -> str:
        for cidr in filter(None, (c.strip() for c in value.split(","))):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:  # one line naming the value, not ipaddress's wording inside pydantic's dump
                raise ValueError(f"{cidr!r} is not a network; expected a CIDR such as 127.0.0.0/8") from None
        return value

    @property
    def robots_agent(self) -> str:
        """The product token of our User-Agent: what robots.txt groups are matched on."""
        return self.fetch_user_agent.split("/")[0].split()[0] or "*"

    def allowed_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        cidrs = [c.strip() for c in self.fetch_allow_networks.split(",")]
        return [ipaddress.ip_network(c, strict=False) for c in cidrs if c]

    def user_agent(self) -> str:
        if not self.fetch_contact:
            return self.fetch_user_agent
        agent = self.fetch_user_agent
        if agent.endswith(")"):
            return f"{agent[:-1]}; contact: {self.fetch_contact})"
        return f"{agent} (contact: {self.fetch_contact})"

    def optout_directives(self) -> frozenset[str]:
        return frozenset(d.strip().lower() for d in self.fetch_robots_tag_optout.split(",") if d.strip())
