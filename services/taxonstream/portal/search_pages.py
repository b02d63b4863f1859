"""The Search and Classify pages: an image, a text or an image id in; hits or the top five out."""

from __future__ import annotations

from typing import Annotated

import grpc
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from taxonstream.index.filters import FIELDS, RANKS
from taxonstream.v1 import indexer_pb2

from .backends import Backends, ServiceError, service_error
from .security import Forbidden, check_csrf
from .uploads import UploadError, check_image
from .views import SearchQuery, card, eol_url, gbif_url, preview
from .web import backends, render

router = APIRouter()
DEFAULT_BANK = "tol"


def _read_image(portal: Backends, upload: UploadFile | None) -> bytes | None:
    """An uploaded image's bytes, refused past the byte cap without reading the rest.

    The routes are plain functions: FastAPI runs them on its thread pool, so the blocking gRPC calls never
    hold the event loop (10 concurrent searches run side by side).
    """
    if upload is None or not upload.filename:
        return None
    cap = portal.settings.upload_max_bytes
    data = upload.file.read(cap + 1)
    return check_image(data, upload.filename, cap, portal.settings.upload_max_pixels)


def _search(portal: Backends, query: SearchQuery, image: bytes | None) -> tuple[list, str]:
    if image is not None:
        request = query.request(image=image)
    elif query.image_id:
        request = query.request(image_id=query.image_id)
    else:
        request = query.request(text=query.text)
    response = portal.call("indexer", portal.indexer.Search, request, timeout=120)
    return [card(hit) for hit in query.keep(response.hits)], f"{response.model}/{response.model_version}"


def _search_page(request: Request, image_upload: UploadFile | None, csrf: str | None) -> HTMLResponse:
    portal = backends(request)
    params = request.query_params
    query = SearchQuery.from_params(params, params.getlist("meta"))
    context = {"query": query, "fields": FIELDS, "hits": None, "error": "", "model": "", "query_preview": ""}
    status = 200
    try:
        image = None
        if request.method == "POST":
            check_csrf(request, csrf)
            image = _read_image(portal, image_upload)
            if image is None:
                raise UploadError("choose an image to search with")
            context["query_preview"] = preview(image)
        if image is not None or query.asked:
            context["hits"], context["model"] = _search(portal, query, image)
    except UploadError as error:
        context["error"], status = str(error), 400
    except Forbidden as error:
        context["error"], status = str(error), 403
    except ServiceError as error:
        context["error"], status = str(error), error.status
    return render(request, "search.html", status, **context)


@router.get("/", include_in_schema=False)
def home() -> RedirectResponse:
    return RedirectResponse("/search", status_code=307)


@router.get("/search", response_class=HTMLResponse)
def search_page(request: Request) -> HTMLResponse:
    return _search_page(request, None, None)


@router.post("/search", response_class=HTMLResponse)
def search_image(
    request: Request, image: Annotated[UploadFile | None, File()] = None, csrf: Annotated[str | None, Form()] = None
) -> HTMLResponse:
    # Reads only: POST because an image does not fit in an address. Filters stay in the query string.
    return _search_page(request, image, csrf)


@router.get("/thumbnail/{image_id}", include_in_schema=False)
def thumbnail_redirect(request: Request, image_id: str) -> Response:
    """A redirect to an indexed image's presigned 256-px thumbnail (listings carry none; searches do).

    The image's own vector finds itself first; the URL the indexer presigns is valid for an hour.
    """
    portal = backends(request)
    try:
        hits = portal.call(
            "indexer", portal.indexer.Search, indexer_pb2.SearchRequest(image_id=image_id, k=1), timeout=30
        ).hits
    except ServiceError as error:
        return Response(str(error), status_code=error.status, media_type="text/plain")
    if not hits or hits[0].image_id != image_id or not hits[0].thumbnail_url:
        return Response(f"no thumbnail for {image_id}", status_code=404, media_type="text/plain")
    # The browser may reuse it well within the hour the presigned URL lasts.
    return RedirectResponse(hits[0].thumbnail_url, status_code=302, headers={"Cache-Control": "private, max-age=900"})


def _labels(text: str) -> list[str]:
    separator = "\n" if "\n" in text else ","
    return [label.strip() for label in text.split(separator) if label.strip()]


def _sample(portal: Backends, rank: str, label: str) -> indexer_pb2.Hit | None:
    """One image of the collection for a prediction: of that taxon (rank) nearest the label's text, or for a
    custom label the image nearest its text. A search, so the hit carries its presigned thumbnail."""
    filters = [indexer_pb2.Filter(field=rank, values=[label])] if rank else []
    try:
        hits = portal.indexer.Search(indexer_pb2.SearchRequest(text=label, k=1, filters=filters), timeout=60).hits
    except grpc.RpcError:
        return None  # a sample is a nicety: the prediction stands without one
    return hits[0] if hits else None


def _classify_page(request: Request, form: dict, image_upload: UploadFile | None) -> HTMLResponse:
    portal = backends(request)
    source = form if request.method == "POST" else request.query_params
    labels_text = (source.get("labels") or "").strip()
    labels = _labels(labels_text)
    rank = "" if labels else (source.get("rank") or "species")
    bank = (source.get("bank") or DEFAULT_BANK).strip()
    image_id = (source.get("id") or "").strip()
    context = {
        "ranks": RANKS,
        "rank": rank,
        "labels_text": labels_text,
        "bank": bank,
        "image_id": image_id,
        "predictions": None,
        "error": "",
        "model": "",
        "query_preview": "",
        "query_thumbnail": "",
    }
    status = 200
    try:
        if rank and rank not in RANKS:
            raise UploadError(f"rank {rank!r} is not one of {', '.join(RANKS)}")
        image = None
        if request.method == "POST":
            check_csrf(request, form.get("csrf"))
            image = _read_image(portal, image_upload)
            if image is None and not image_id:
                raise UploadError("choose an image to classify")
        if image is not None or image_id:
            query = {"image": image} if image is not None else {"image_id": image_id}
            classify = indexer_pb2.ClassifyRequest(labels=labels, rank=rank, k=5, bank=bank, **query)
            try:
                response = portal.indexer.Classify(classify, timeout=600)
            except grpc.RpcError as error:
                raise service_error("indexer", portal.address("indexer"), error) from None
            context["model"] = f"{response.model}/{response.model_version}"
            context["query_preview"] = preview(image) if image is not None else ""
            context["predictions"] = [
                {
                    "label": p.label,
                    "score": p.score,
                    "taxon": list(p.taxon),
                    "common_name": p.common_name,
                    "sample": card(s, scored=False) if (s := _sample(portal, rank, p.label)) else None,
                    "eol": eol_url(p.label),
                    "gbif": gbif_url(p.label),
                }
                for p in response.predictions
            ]
    except UploadError as error:
        context["error"], status = str(error), 400
    except Forbidden as error:
        context["error"], status = str(error), 403
    except ServiceError as error:
        hint = " (a rank needs a label bank: `taxonstream models bank --help`)" if "no label bank" in str(error) else ""
        context["error"], status = f"{error}{hint}", error.status
    return render(request, "classify.html", status, **context)


@router.get("/classify", response_class=HTMLResponse)
def classify_page(request: Request) -> HTMLResponse:
    return _classify_page(request, {}, None)


@router.post("/classify", response_class=HTMLResponse)
def classify_image(
    request: Request,
    image: Annotated[UploadFile | None, File()] = None,
    csrf: Annotated[str | None, Form()] = None,
    rank: Annotated[str, Form()] = "",
    labels: Annotated[str, Form()] = "",
    bank: Annotated[str, Form()] = "",
    id: Annotated[str, Form()] = "",  # noqa: A002 - the form field's name
) -> HTMLResponse:
    form = {"csrf": csrf, "rank": rank, "labels": labels, "bank": bank, "id": id}
    return _classify_page(request, form, image)
