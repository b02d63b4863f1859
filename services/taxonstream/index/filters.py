"""Filterable facets of an image's metadata (taxonomy ranks, provider, licence) and filter semantics.

A filter is `{field: {value, ...}}`: an item matches when, for every field named, its value is one of
the values given (AND across fields, OR within a field). Matching is exact after trimming and collapsing
whitespace — the same rule the FAISS inverted index and the Milvus expression apply, so both backends
return the same items for the same filter.

Facets are read from the record's own columns, whichever vocabulary the source used: plain names,
Darwin Core (`dwc:genus`), iDigBio/GBIF rights and publisher columns. `species` falls back to
genus + specificEpithet, then to the binomial at the start of scientificName.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping

RANKS: tuple[str, ...] = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
FIELDS: tuple[str, ...] = (*RANKS, "provider", "licence")

# Columns consulted for each field, first non-empty wins.
_SOURCES: dict[str, tuple[str, ...]] = {
    **{rank: (rank, f"dwc:{rank}") for rank in RANKS},
    "provider": (
        "provider",
        "publisher",
        "dcterms:publisher",
        "institutionCode",
        "dwc:institutionCode",
        "recordset",
        "datasetName",
    ),
    "licence": (
        "licence",
        "license",
        "dcterms:license",
        "dcterms:rights",
        "dc:rights",
        "xmpRights:UsageTerms",
        "xmpRights:WebStatement",
    ),
}
_ALIASES = {"license": "licence"}
_SPACE = re.compile(r"\s+")
_BINOMIAL = re.compile(r"^([A-Z][a-z-]+)\s+([a-z][a-z-]+)\b")

Filters = Mapping[str, Collection[str]]


def clean(value: str) -> str:
    return _SPACE.sub(" ", value).strip()


def field_name(name: str) -> str:
    """The canonical field for a name a user typed (`license` is accepted for `licence`)."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in FIELDS:
        raise ValueError(f"cannot filter on {name!r}; filterable fields: {', '.join(FIELDS)}")
    return key


def facets(metadata: Mapping[str, str]) -> dict[str, str]:
    """The filterable fields of one image's metadata; fields it does not have are absent."""
    out: dict[str, str] = {}
    for field_, sources in _SOURCES.items():
        for source in sources:
            value = clean(str(metadata.get(source) or ""))
            if value:
                out[field_] = value
                break
    if "species" not in out:
        epithet = clean(str(metadata.get("specificEpithet") or metadata.get("dwc:specificEpithet") or ""))
        if epithet and "genus" in out:
            out["species"] = f"{out['genus']} {epithet}"
        else:
            name = clean(str(metadata.get("scientificName") or metadata.get("dwc:scientificName") or ""))
            if match := _BINOMIAL.match(name):
                out["species"] = f"{match.group(1)} {match.group(2)}"
    if "genus" not in out and "species" in out:
        out["genus"] = out["species"].split(" ", 1)[0]
    return out


def normalise(filters: Filters | None) -> dict[str, frozenset[str]]:
    """Canonical field names and cleaned values; an unknown field is an error, not an empty result."""
    out: dict[str, frozenset[str]] = {}
    for name, values in (filters or {}).items():
        if isinstance(values, str):
            values = [values]
        key = field_name(name)
        cleaned = frozenset(clean(v) for v in values)
        # Two entries for the same field (e.g. `license` and `licence`) must both hold: intersect.
        out[key] = out[key] & cleaned if key in out else cleaned
    return out


def parse(expressions: Iterable[str]) -> dict[str, frozenset[str]]:
    """`["genus=Danaus", "genus=Papilio", "provider=iDigBio"]` → genus in {…} and provider = iDigBio."""
    grouped: dict[str, set[str]] = {}
    for expression in expressions:
        name, sep, value = expression.partition("=")
        if not sep or not value.strip():
            raise ValueError(f"filter {expression!r} is not FIELD=VALUE")
        grouped.setdefault(field_name(name), set()).add(clean(value))
    return {k: frozenset(v) for k, v in grouped.items()}


def matches(item_facets: Mapping[str, str], filters: Mapping[str, Collection[str]]) -> bool:
    """The reference semantics: every filtered field present with one of the allowed values."""
    return all(item_facets.get(key) in values for key, values in filters.items())
