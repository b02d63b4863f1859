"""The portal's settings (environment variables, prefix TAXONSTREAM_), beside the core ones."""

from __future__ import annotations

from pydantic import Field

from taxonstream.core.settings import PORTAL_HTTP_PORT, CoreSettings, loopback_address


class PortalSettings(CoreSettings):
    portal_port: int = PORTAL_HTTP_PORT
    # Set: starting, retrying and cancelling jobs need it (form field `token` or `Authorization: Bearer`).
    portal_token: str = ""
    # Listen beyond loopback with no token: only behind something that authenticates (an Ingress with auth).
    portal_allow_without_token: bool = False
    # Uploaded query images: 25 MiB and 60 MP cover a full-frame camera JPEG; more is refused unread.
    upload_max_bytes: int = Field(default=25 << 20, ge=1)
    upload_max_pixels: int = Field(default=60_000_000, ge=1)
    # Uploaded URL lists (CSV/TSV/JSONL/Parquet): 64 MiB is ~500,000 rows of a GBIF multimedia export.
    url_list_max_bytes: int = Field(default=64 << 20, ge=1)
    # Images read for the dashboard and the embedding map (ListImages streams them; beyond this, a sample).
    listing_limit: int = Field(default=20_000, ge=1)
    # Seconds a listing is reused by the next page view: the dashboard's controls re-ask it every click.
    listing_ttl_seconds: float = Field(default=20.0, ge=0)
    # The same addresses the CLI reads: TAXONSTREAM_<SERVICE>_ADDR, else the local stack's loopback port.
    fetcher_addr: str = loopback_address("fetcher")
    checksummer_addr: str = loopback_address("checksummer")
    indexer_addr: str = loopback_address("indexer")

    def address(self, service: str) -> str:
        return getattr(self, f"{service}_addr")
