"""What the pages show of the services' answers: hits as cards, filters from the address, predictions."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from PIL import Image

from taxonstream.index.filters import FIELDS, RANKS, facets
from taxonstream.v1 import indexer_pb2

# Metadata the pipeline adds for its own bookkeeping: not a column a person filters or colours by.
INTERNAL_COLUMNS = {"original_key", "thumbnail_key", "crop_key", "sha256", "record_id", "box", "model", "size"}
# Over-fetch for metadata filters the index cannot apply itself (they are applied to this many top hits).
METADATA_FILTER_POOL = 500
MAX_K = 200
# "column>=value": a comparison the index applies itself when the value is a number (any metadata column).
_COMPARISON = re.compile(r"^\s*([^<>=!]+?)\s*(>=|<=|>|<|=)\s*(.+?)\s*$")


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class Card:
    """One image as a grid tile."""

    image_id: str
    thumbnail_url: str
    score: float | None
    taxonomy: list[tuple[str, str]]
    name: str
    licence: str
    provider: str
    source_url: str
    metadata: dict[str, str]

    @property
    def short_id(self) -> str:
        return self.image_id[:12]


def column_value(metadata: Mapping[str, str], column: str, found_facets: Mapping[str, str] | None = None) -> str:
    """A column's value: the index's facet for ranks/provider/licence (any vocabulary), else the raw column."""
    if column in FIELDS:
        return (found_facets if found_facets is not None else facets(metadata)).get(column, "")
    return str(metadata.get(column, "")).strip()


def thumbnail(hit: indexer_pb2.Hit) -> str:
    """The presigned URL a Search hit carries; ListImages hits have none: the portal's redirect asks for one."""
    return hit.thumbnail_url or f"/thumbnail/{quote(hit.image_id)}"


def card(hit: indexer_pb2.Hit, scored: bool = True) -> Card:
    metadata = dict(hit.metadata)
    found = facets(metadata)
    return Card(
        image_id=hit.image_id,
        thumbnail_url=thumbnail(hit),
        score=hit.score if scored else None,
        taxonomy=[(rank, found[rank]) for rank in RANKS if rank in found],
        name=metadata.get("scientificName") or found.get("species") or found.get("genus") or "",
        licence=found.get("licence", ""),
        provider=found.get("provider", ""),
        source_url=metadata.get("url", ""),
        metadata={k: v for k, v in sorted(metadata.items()) if k not in INTERNAL_COLUMNS},
    )


@dataclass
class SearchQuery:
    """A search as the address says it: ?text=… | ?id=… (or an uploaded image), k, filters."""

    text: str = ""
    image_id: str = ""
    k: int = 24
    filters: dict[str, list[str]] = field(default_factory=dict)  # index fields (ranks, provider, licence)
    metadata: list[tuple[str, str]] = field(default_factory=list)  # any other column, applied to the top hits
    numeric: list[tuple[str, str, str]] = field(default_factory=list)  # (column, op, number), inside the index

    @classmethod
    def from_params(cls, params: Mapping[str, str], metadata_filters: Iterable[str]) -> SearchQuery:
        try:
            k = min(max(int(params.get("k") or 24), 1), MAX_K)
        except ValueError:
            k = 24
        filters = {}
        for name in FIELDS:
            values = [v.strip() for v in (params.get(name) or "").split(",") if v.strip()]
            if values:
                filters[name] = values
        pairs, numeric = [], []
        for expression in metadata_filters:
            found = _COMPARISON.match(expression)
            if not found:
                continue
            column, op, value = found.groups()
            if _number(value):
                numeric.append((column, op, value))
            elif op == "=":
                pairs.append((column, value))
        text, image_id = (params.get("text") or "").strip(), (params.get("id") or "").strip()
        return cls(text, image_id, k, filters, pairs, numeric)

    @property
    def asked(self) -> bool:
        return bool(self.text or self.image_id)

    def request(self, **query) -> indexer_pb2.SearchRequest:
        pool = METADATA_FILTER_POOL if self.metadata else self.k
        filters = [indexer_pb2.Filter(field=f, values=v) for f, v in self.filters.items()]
        filters += [indexer_pb2.Filter(field=c, op=op, values=[v]) for c, op, v in self.numeric]
        return indexer_pb2.SearchRequest(k=max(pool, self.k), filters=filters, **query)

    def keep(self, hits: Iterable[indexer_pb2.Hit]) -> list[indexer_pb2.Hit]:
        """The hits that match the metadata filters too, at most k."""
        kept = [h for h in hits if all(column_value(h.metadata, c) == v for c, v in self.metadata)]
        return kept[: self.k]

    def filter_params(self) -> list[tuple[str, str]]:
        return (
            [(f, ",".join(v)) for f, v in self.filters.items()]
            + [("meta", f"{c}{op}{v}") for c, op, v in self.numeric]
            + [("meta", f"{c}={v}") for c, v in self.metadata]
        )

    @property
    def column_filters(self) -> list[str]:
        """The "other column" expressions, as typed back into the form."""
        return [f"{c}{op}{v}" for c, op, v in self.numeric] + [f"{c}={v}" for c, v in self.metadata]

    def more_like(self, image_id: str) -> str:
        """The address of "more like this": the same filters, this image's vector."""
        return "/search?" + urlencode([("id", image_id), ("k", str(self.k)), *self.filter_params()])


def gbif_url(name: str) -> str:
    return f"https://www.gbif.org/species/search?q={quote(name)}"


def eol_url(name: str) -> str:
    return f"https://eol.org/search?q={quote(name)}"


def preview(data: bytes, size: int = 256) -> str:
    """A small JPEG data URL of an uploaded image, so the results page shows what was asked."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale, not every pixel
        small = image.convert("RGB")
        small.thumbnail((size, size))
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()
