"""Which images an export takes: a job's, a search's hits, or every image matching filters.

- a job: the images whose first record came from it (Indexer.ListImages(job_id)); the fetcher is asked
  first, so a job that does not exist and a job with nothing indexed fail with different messages.
- text or an image file: Indexer.Search's k best hits, filters applied inside the search.
- filters only: every indexed image matching them (ListImages(filters)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from taxonstream.v1 import fetcher_pb2, indexer_pb2


class SelectionError(ValueError):
    """The query selects nothing, or names something that does not exist."""


@dataclass(frozen=True)
class Query:
    job_id: str = ""
    text: str = ""
    image: bytes = b""
    image_name: str = ""  # for the manifest; the bytes are not recorded
    filters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Numeric filters on metadata columns: (column, op, number[s]), e.g. ("F_small", ">=", "0.5").
    comparisons: tuple[tuple[str, str, str], ...] = ()
    k: int = 1000
    model: str = ""  # index version (taxonstream reembed); empty: the serving one
    model_version: str = ""

    @property
    def kind(self) -> str:
        return "job" if self.job_id else "text" if self.text else "image" if self.image else "filters"

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"kind": self.kind, "filters": {f: list(v) for f, v in self.filters.items()}}
        if self.comparisons:
            described["comparisons"] = [f"{column}{op}{value}" for column, op, value in self.comparisons]
        if self.job_id:
            described["job_id"] = self.job_id
        if self.text:
            described["text"] = self.text
        if self.image:
            described["image"] = self.image_name
        if self.kind in {"text", "image"}:
            described["k"] = self.k
        return described

    def version(self) -> dict[str, str]:
        """The index-version fields every indexer request of this export carries."""
        return {"model": self.model, "model_version": self.model_version or "1"} if self.model else {}

    def proto_filters(self) -> list[indexer_pb2.Filter]:
        facets = [indexer_pb2.Filter(field=f, values=list(v)) for f, v in self.filters.items()]
        numeric = [indexer_pb2.Filter(field=c, values=v.split(","), op=op) for c, op, v in self.comparisons]
        return facets + numeric


@dataclass
class Item:
    image_id: str
    metadata: dict[str, str]
    vector: np.ndarray | None = None
    rank: int | None = None  # search exports: 1 = best
    score: float | None = None


@dataclass
class Selection:
    items: list[Item]
    model: str  # "<model>/<version>" of the index the images were taken from


def _serving_model(indexer, query: Query) -> str:
    stats = indexer.Stats(indexer_pb2.StatsRequest(**query.version()), timeout=60)
    return f"{stats.model}/{stats.model_version}"


def _check_job(fetcher, job_id: str) -> fetcher_pb2.JobStatus:
    try:
        return fetcher.GetJob(fetcher_pb2.GetJobRequest(job_id=job_id), timeout=30)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            raise SelectionError(f"no job {job_id!r} (`taxonstream jobs` lists the jobs)") from None
        raise


def _listed(indexer, request: indexer_pb2.ListImagesRequest) -> list[Item]:
    items = [
        Item(hit.image_id, dict(hit.metadata), np.asarray(hit.vector, dtype=np.float32) if hit.vector else None)
        for hit in indexer.ListImages(request, timeout=3600)
    ]
    items.sort(key=lambda item: item.image_id)  # the same order on every run, whatever the index's
    return items


def select(query: Query, indexer, fetcher=None, with_vectors: bool = False) -> Selection:
    filters = query.proto_filters()
    if query.job_id:
        if fetcher is None:
            raise ValueError("a job export needs the fetcher, to tell a missing job from an empty one")
        status = _check_job(fetcher, query.job_id)
        request = indexer_pb2.ListImagesRequest(
            job_id=query.job_id, filters=filters, with_vectors=with_vectors, **query.version()
        )
        items = _listed(indexer, request)
        if not items:
            state = "still running" if not status.done else "done"
            raise SelectionError(
                f"job {query.job_id!r} has no indexed images{' matching the filters' if filters else ''} "
                f"({state}: {status.total} records, {status.indexed} indexed, {status.duplicate} duplicate of "
                f"images first seen elsewhere, {status.failed} failed)"
            )
        return Selection(items, _serving_model(indexer, query))
    if query.text or query.image:
        request = indexer_pb2.SearchRequest(k=query.k, filters=filters, **query.version())
        if query.text:
            request.text = query.text
        else:
            request.image = query.image
        response = indexer.Search(request, timeout=600)
        items = [
            Item(h.image_id, dict(h.metadata), rank=rank, score=float(h.score))
            for rank, h in enumerate(response.hits, start=1)
        ]
        if not items:
            raise SelectionError("the search found no images" + (" matching the filters" if filters else ""))
        if with_vectors:
            _attach_vectors(indexer, items, filters, query)
        return Selection(items, f"{response.model}/{response.model_version}")
    if not filters:
        raise SelectionError("say what to export: a JOB, --text, --image or at least one --filter")
    request = indexer_pb2.ListImagesRequest(filters=filters, with_vectors=with_vectors, **query.version())
    items = _listed(indexer, request)
    if not items:
        raise SelectionError("no indexed image matches the filters")
    return Selection(items, _serving_model(indexer, query))


def _attach_vectors(indexer, items: list[Item], filters: list[indexer_pb2.Filter], query: Query) -> None:
    """Search hits carry no vectors: take them from a listing under the same filters (one pass over them)."""
    wanted = {item.image_id: item for item in items}
    request = indexer_pb2.ListImagesRequest(filters=filters, with_vectors=True, **query.version())
    for hit in indexer.ListImages(request, timeout=3600):
        if hit.image_id in wanted:
            wanted[hit.image_id].vector = np.asarray(hit.vector, dtype=np.float32)
    # A hit deleted between the search and the listing keeps no vector; the export records it as an error.
