"""Filterable facets of an image's metadata (taxonomy ranks, provider, licence) and filter semantics.

A filter is `{field: {value, ...}}`: an item matches when, for every field named, its value is one of
the values given (AND across fields, OR within a field). Matching is exact after trimming and collapsing
whitespace — the same rule the FAISS inverted index and the Milvus expression apply, so both backends
return the same items for the same filter.

Numeric filters (`F_small>=0.5`) apply to any metadata column read as a number: `comparisons.Numeric`
stands in a filter mapping for the values, under the column's exact name.

Facets are read from the record's own columns, whichever vocabulary the source used: plain names,
Darwin Core (`dwc:genus`), iDigBio/GBIF rights and publisher columns. `species` falls back to
genus + specificEpithet, then to the binomial at the start of scientificName.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping

from taxonstream.index.comparisons import Numeric, number, split_expression

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

Filters = Mapping[str, Collection[str] | Numeric]
Wanted = dict[str, frozenset[str] | Numeric]  # normalised: canonical facet fields, exact numeric columns


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


def normalise(filters: Filters | None) -> Wanted:
    """Canonical field names and cleaned values; an unknown field is an error, not an empty result."""
    return combine((filters or {}).items())


def combine(parts: Iterable[tuple[str, Collection[str] | Numeric]]) -> Wanted:
    """`normalise` for (field, values) pairs that may repeat a field: every pair must hold."""
    out: Wanted = {}
    for name, values in parts:
        if isinstance(values, Numeric):
            column = name.strip()
            held = out.get(column)
            if held is not None and not isinstance(held, Numeric):
                raise ValueError(f"cannot filter {column!r} both by value and by number")
            out[column] = values if held is None else held.intersect(values)
            continue
        if isinstance(values, str):
            values = [values]
        key = field_name(name)
        cleaned = frozenset(clean(v) for v in values)
        if isinstance(out.get(key), Numeric):
            raise ValueError(f"cannot filter {key!r} both by value and by number")
        # Two entries for the same field (e.g. `license` and `licence`) must both hold: intersect.
        previous = out.get(key)
        out[key] = previous & cleaned if isinstance(previous, frozenset) else cleaned
    return out


def split(wanted: Wanted) -> tuple[dict[str, frozenset[str]], dict[str, Numeric]]:
    """Normalised filters as (facet filters, numeric filters)."""
    facet = {k: v for k, v in wanted.items() if not isinstance(v, Numeric)}
    numeric = {k: v for k, v in wanted.items() if isinstance(v, Numeric)}
    return facet, numeric


def from_request(parts: Iterable[tuple[str, str, Collection[str]]]) -> Wanted:
    """Filters as (field, op, values) from a request: op "" (or "=" on a facet field) a facet's values,
    else a numeric comparison on the metadata column `field`."""
    pairs: list[tuple[str, Collection[str] | Numeric]] = []
    for name, op, values in parts:
        if not op or (op == "=" and is_facet(name)):
            pairs.append((name, list(values)))
        else:
            try:
                pairs.append((name, Numeric.of(op, list(values))))
            except ValueError as error:
                raise ValueError(f"filter on {name!r}: {error}") from None
    return combine(pairs)


def is_facet(name: str) -> bool:
    try:
        field_name(name)
    except ValueError:
        return False
    return True


def parse(expressions: Iterable[str]) -> Wanted:
    """`["genus=Danaus", "genus=Papilio", "provider=iDigBio", "F_small>=0.5"]` → genus in {…} and
    provider = iDigBio and F_small ≥ 0.5. `=` on a facet field is a value; on any other column a number."""
    grouped: dict[str, set[str]] = {}
    numeric: dict[str, Numeric] = {}
    for expression in expressions:
        name, op, value = split_expression(expression)
        if op == "=" and is_facet(name):
            grouped.setdefault(field_name(name), set()).add(clean(value))
            continue
        if op == "=" and number(value) is None:
            raise ValueError(
                f"cannot filter on {name!r} by value; value fields: {', '.join(FIELDS)}; "
                "any metadata column by number: COLUMN>=|>|<=|<|=NUMBER"
            )
        try:
            numeric[name] = numeric.get(name, Numeric()).tighten(op, [value])
        except ValueError as error:
            raise ValueError(f"filter {expression!r}: {error}") from None
    return normalise({**{k: frozenset(v) for k, v in grouped.items()}, **numeric})


def matches(item_facets: Mapping[str, str], filters: Mapping[str, Collection[str]]) -> bool:
    """The reference semantics: every filtered field present with one of the allowed values."""
    return all(item_facets.get(key) in values for key, values in filters.items())


def accepts(metadata: Mapping[str, str], wanted: Wanted) -> bool:
    """The reference semantics over an image's metadata, facet and numeric filters together."""
    facet, numeric = split(wanted)
    if facet and not matches(facets(metadata), facet):
        return False
    return all(rule.accepts(number(metadata.get(column, ""))) for column, rule in numeric.items())
