"""The Dashboard (distributions, samples, a map) and the Embedding map (a 2-D projection of the vectors)."""

from __future__ import annotations

from urllib.parse import urlencode

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from taxonstream.index.filters import FIELDS, facets
from taxonstream.v1 import indexer_pb2

from . import landcover_colours as cover
from .backends import ServiceError
from .insights import NO_VALUE, colours, columns, distribution, map_points, project, samples, umap_available, value_of
from .views import card, column_value, thumbnail
from .web import backends, json_error, render

router = APIRouter()
# Points drawn on the embedding map: beyond this an even sample (SVG with 5,000 circles stays responsive).
MAP_POINTS = 5000


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(request: Request) -> HTMLResponse:
    portal = backends(request)
    params = request.query_params
    by = params.get("by") or "family"
    colour_by = params.get("colour") or ""
    map_colour = params.get("map_colour") or colour_by or "family"
    value = params.get("value") or ""
    where_column, where_value = params.get("where") or "", params.get("where_value") or ""
    # `?genus=Apis,Bombus&licence=CC0-1.0`: only those images (comma: any of), applied by the indexer to Stats
    # and the listing alike — so a job's records can be looked at even when the collection is past the listing cap.
    only = tuple((f, tuple(v.strip() for v in params[f].split(",") if v.strip())) for f in FIELDS if params.get(f))
    only = tuple((f, v) for f, v in only if v)
    context = {
        "by": by,
        "colour_by": colour_by,
        "map_colour": map_colour,
        "value": value,
        "where_column": where_column,
        "where_value": where_value,
        "error": "",
        "stats": None,
        "shares": [(c, cover.describe(c)) for c in cover.SHARE_COLUMNS],
        "only": [(f, ",".join(v)) for f, v in only],
        "only_query": urlencode([(f, ",".join(v)) for f, v in only]),
    }
    try:
        request_filters = [indexer_pb2.Filter(field=f, values=list(v)) for f, v in only]
        stats = portal.call(
            "indexer", portal.indexer.Stats, indexer_pb2.StatsRequest(filters=request_filters), timeout=60
        )
        hits = portal.list_images(filters=only)
    except ServiceError as error:
        context["error"] = str(error)
        return render(request, "dashboard.html", error.status, columns=list(FIELDS), **context)
    try:
        top = min(max(int(params.get("top") or 30), 1), 1000)  # rows shown, most images first
    except ValueError:
        top = 30
    found = distribution(stats, hits, by, colour_by, top)
    where = (where_column, where_value) if where_column and where_value else None
    shown = [card(h, scored=False) for h in samples(hits, by, value, where)] if value else []
    points, map_legend, unplaced = map_points(hits, map_colour)
    where_values = sorted({value_of(h.metadata, where_column) for h in hits}) if where_column else []
    numeric = cover.is_share(map_colour)
    context.update(
        stats=stats,
        columns=columns(hits),
        distribution=found,
        samples=shown,
        points=points,
        map_legend=map_legend,
        unplaced=unplaced,
        listed=len(hits),
        where_values=where_values[:500],
        truncated=len(hits) >= portal.settings.listing_limit,
        map_summary=cover.summarise((h.metadata for h in hits), map_colour) if numeric else None,
        map_gradient=cover.gradient() if numeric else [],
        no_data_colour=cover.NO_DATA_COLOUR,
    )
    return render(request, "dashboard.html", **context)


@router.get("/embeddings", response_class=HTMLResponse)
def embeddings_page(request: Request) -> HTMLResponse:
    params = request.query_params
    return render(
        request,
        "embeddings.html",
        colour=params.get("colour") or "family",
        method=params.get("method") or "pca",
        fields=FIELDS,
        shares=[(c, cover.describe(c)) for c in cover.SHARE_COLUMNS],
        umap=umap_available(),
        error="",
    )


@router.get("/api/embeddings")
def embeddings(request: Request) -> JSONResponse:
    """Every (sampled) image's 2-D position, colour value, thumbnail and taxonomy, as the map draws them."""
    portal = backends(request)
    colour_by = request.query_params.get("colour") or "family"
    method = request.query_params.get("method") or "pca"
    try:
        hits = portal.list_images(with_vectors=True)
    except ServiceError as error:
        return json_error(error.status, str(error))
    if len(hits) > MAP_POINTS:
        hits = [hits[i] for i in np.linspace(0, len(hits) - 1, MAP_POINTS).astype(int)]
    if not hits:
        return JSONResponse({"points": [], "legend": {}, "method": method, "explained": [], "total": 0})
    vectors = np.asarray([h.vector for h in hits], dtype=np.float32)
    coords, used, explained = project(vectors, method)
    numeric = cover.is_share(colour_by)
    rows = []
    for hit, (x, y) in zip(hits, coords.tolist(), strict=True):
        found = facets(hit.metadata)
        share = cover.share(hit.metadata, colour_by) if numeric else None
        rows.append(
            {
                "id": hit.image_id,
                "x": round(x, 5),
                "y": round(y, 5),
                # A share's bin (what the legend selects by); its own colour and value beside it.
                "value": cover.bin_label(share)
                if numeric
                else column_value(hit.metadata, colour_by, found) or NO_VALUE,
                **({"share": share, "colour": cover.colour(share)} if numeric else {}),
                "thumb": thumbnail(hit),
                "name": hit.metadata.get("scientificName") or found.get("species") or found.get("genus") or "",
                "taxonomy": " › ".join(found[r] for r in FIELDS[:7] if r in found),
                "licence": found.get("licence", ""),
                "url": hit.metadata.get("url", ""),
            }
        )
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["value"]] = counts.get(row["value"], 0) + 1
    if numeric:  # the scale's bins, low to high, then "no data"
        legend = {v: c for v, c in cover.legend().items() if v in counts}
    else:
        legend = colours(sorted(counts, key=lambda v: -counts[v]))
    return JSONResponse(
        {
            "points": rows,
            "legend": legend,
            "counts": counts,
            "method": used,
            "explained": explained,
            "total": len(rows),
            "scale": cover.gradient() if numeric else [],
        }
    )


@router.get("/api/facets")
def facet_values(request: Request) -> JSONResponse:
    """The most common values of each index field (Stats), for the filter fields' suggestions."""
    portal = backends(request)
    try:
        stats = portal.call("indexer", portal.indexer.Stats, indexer_pb2.StatsRequest(), timeout=30)
    except ServiceError as error:
        return json_error(error.status, str(error))
    return JSONResponse(
        {
            name: [v for v, _ in sorted(counts.counts.items(), key=lambda kv: -kv[1])[:200]]
            for name, counts in stats.by_field.items()
        }
    )
