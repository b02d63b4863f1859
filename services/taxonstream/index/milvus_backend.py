"""The same index on Milvus, for collections past one machine (`TAXONSTREAM_INDEX_BACKEND=milvus`).

One Milvus collection holds an image per row: `image_id` (primary key), `vector` (inner product), one
VARCHAR column per filterable facet (`f_genus`, `f_provider`, … — empty when unknown) and the whole
metadata as JSON, and `numbers`: a JSON object of the metadata values that read as numbers, as numbers
(what numeric filters such as `F_small>=0.5` compare). Filters become a boolean expression on those
columns, which Milvus evaluates inside the vector search (a bitset over each segment), so a non-matching
row is never a candidate. A collection made before `numbers` existed answers numeric filters with an
error that says to re-index it.

Durability is Milvus's own: a cluster writes its log and segments to its message queue and object
storage (MinIO/S3), so the indexer's "snapshot" here is a flush plus a small manifest; restoring is
reconnecting, and replaying the topic from the snapshot's offsets re-applies idempotent upserts.

`uri` as a file path ending in `.db` runs Milvus Lite in this process (tests, laptops); as `http://host:19530`
it talks to a Milvus server or cluster. `pymilvus` is imported only when this backend is chosen.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from taxonstream.index import filters as flt
from taxonstream.index.comparisons import Numeric, number
from taxonstream.index.types import Hit, IndexStats, MilvusConfig

FORMAT = "taxonstream-milvus/1"
_FACET = {field: f"f_{field}" for field in flt.FIELDS}
_MAX_ID = 512
_MAX_FACET = 1024
NUMBERS = "numbers"  # the JSON column of the metadata values that read as numbers


def literal(value: str) -> str:
    """A Milvus expression string literal. Facet values are `filters.clean()`ed (no control whitespace),
    so escaping the backslash and the quote is enough."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def expression(filters: flt.Wanted) -> str:
    """`f_genus in ["Danaus", "Papilio"] and numbers["F_small"] >= 0.5` for normalised filters."""
    facet, numeric = flt.split(filters)
    clauses = []
    for field_, values in sorted(facet.items()):
        clauses.append(f"{_FACET[field_]} in [{', '.join(literal(v) for v in sorted(values))}]")
    for column, rule in sorted(numeric.items()):
        clauses.extend(numeric_clauses(column, rule))
    return " and ".join(clauses)


def numeric_clauses(column: str, rule: Numeric) -> list[str]:
    key = f"{NUMBERS}[{literal(column)}]"
    out = []
    for op, value in rule.clauses():
        if isinstance(value, tuple):
            # Milvus Lite takes `in [...]` only on a field, not a JSON path: one `==` per number.
            either = " or ".join(f"{key} == {v!r}" for v in value) or f"({key} > 1 and {key} < 0)"
            out.append(f"({either})")
        else:
            out.append(f"{key} {'==' if op == '=' else op} {value!r}")
    return out


def numbers(metadata: Mapping[str, str]) -> dict[str, float]:
    """The metadata values that read as finite numbers, as numbers."""
    return {str(k): found for k, v in metadata.items() if (found := number(v)) is not None}


class MilvusIndex:
    """The `IndexBackend` interface over one Milvus collection."""

    def __init__(self, config: MilvusConfig | None = None) -> None:
        from pymilvus import MilvusClient

        self.config = config or MilvusConfig()
        kwargs: dict[str, Any] = {"uri": self.config.uri}
        if self.config.token:
            kwargs["token"] = self.config.token
        if self.config.db_name:
            kwargs["db_name"] = self.config.db_name
        self.client = MilvusClient(**kwargs)
        self.name = self.config.collection
        self.dim: int | None = None
        self.has_numbers = True  # a new collection gets the column; an old one may lack it
        if self.client.has_collection(self.name):
            fields = self.client.describe_collection(self.name)["fields"]
            vector = next(f for f in fields if f["name"] == "vector")
            self.dim = int(vector["params"]["dim"])
            self.has_numbers = any(f["name"] == NUMBERS for f in fields)
            self.client.load_collection(self.name)

    def _create(self, dim: int) -> None:
        from pymilvus import DataType

        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("image_id", DataType.VARCHAR, is_primary=True, max_length=_MAX_ID)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        for column in _FACET.values():
            schema.add_field(column, DataType.VARCHAR, max_length=_MAX_FACET)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field(NUMBERS, DataType.JSON)
        index = self.client.prepare_index_params()
        index.add_index(
            field_name="vector",
            index_type=self.config.index_type,
            metric_type="IP",
            params=dict(self.config.index_params),
        )
        self.client.create_collection(
            self.name, schema=schema, index_params=index, consistency_level=self.config.consistency_level
        )
        self.dim = dim

    def __len__(self) -> int:
        if self.dim is None:
            return 0
        rows = self.client.query(self.name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def upsert(self, image_id: str, vector: np.ndarray, metadata: Mapping[str, str]) -> None:
        self.upsert_many([image_id], np.asarray(vector, dtype=np.float32).reshape(1, -1), [metadata])

    def upsert_many(self, image_ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[Mapping[str, str]]) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(image_ids), -1)
        if len(metadata) != len(image_ids):
            raise ValueError(f"{len(image_ids)} ids but {len(metadata)} metadata entries")
        if not image_ids:
            return
        if self.dim is None:
            self._create(vectors.shape[1])
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vector of {vectors.shape[1]} dimensions for an index of {self.dim}")
        last = {image_id: n for n, image_id in enumerate(image_ids)}  # the last of repeated ids wins
        rows = []
        for image_id, n in last.items():
            if len(image_id) > _MAX_ID:
                raise ValueError(f"image id longer than {_MAX_ID} characters")
            item = flt.facets(metadata[n])
            rows.append(
                {
                    "image_id": image_id,
                    "vector": vectors[n].tolist(),
                    **{column: item.get(field_, "")[:_MAX_FACET] for field_, column in _FACET.items()},
                    "metadata": {str(k): str(v) for k, v in metadata[n].items()},
                    **({NUMBERS: numbers(metadata[n])} if self.has_numbers else {}),
                }
            )
        self.client.upsert(self.name, rows)

    def delete(self, image_id: str) -> bool:
        return self.delete_many([image_id]) == 1

    def delete_many(self, image_ids: Sequence[str]) -> int:
        if self.dim is None or not image_ids:
            return 0
        # Milvus reports the keys it was asked to delete, not the rows it had: count them first.
        present = self.client.get(self.name, ids=list(set(image_ids)), output_fields=["image_id"])
        if present:
            self.client.delete(self.name, ids=[row["image_id"] for row in present])
        return len(present)

    def search(self, vector: np.ndarray, k: int, filters: flt.Filters | None = None) -> list[Hit]:
        return self.search_many(vector, k, filters)[0]

    def search_many(self, vectors: np.ndarray, k: int, filters: flt.Filters | None = None) -> list[list[Hit]]:
        wanted = flt.normalise(filters)
        queries = np.asarray(vectors, dtype=np.float32)
        queries = queries.reshape(1, -1) if queries.ndim == 1 else queries
        if self.dim is None or k <= 0:
            return [[] for _ in queries]
        if queries.shape[1] != self.dim:
            raise ValueError(f"query of {queries.shape[1]} dimensions for an index of {self.dim}")
        if any(isinstance(values, frozenset) and not values for values in wanted.values()):
            return [[] for _ in queries]  # a field allowed no value at all: nothing can match
        expr = self._expression(wanted)
        if wanted and (count := self._count(expr)) <= self.config.exact_below:
            return self._exact(queries, k, expr, count)
        params = dict(self.config.search_params)
        if "ef" in params:  # HNSW refuses an ef below the number of hits asked for
            params["ef"] = max(params["ef"], k)
        results = self.client.search(
            self.name,
            data=queries.tolist(),
            limit=k,
            filter=expr,
            output_fields=["metadata"],
            search_params={"metric_type": "IP", "params": params},
        )
        return [
            [Hit(str(hit["image_id"]), float(hit["distance"]), dict(hit["entity"]["metadata"])) for hit in row]
            for row in results
        ]

    def _count(self, expr: str) -> int:
        return int(self.client.query(self.name, filter=expr, output_fields=["count(*)"])[0]["count(*)"])

    def _exact(self, queries: np.ndarray, k: int, expr: str, count: int) -> list[list[Hit]]:
        """Score every matching row (few, by the caller's count) exactly: best first, ties by image id."""
        if count == 0:
            return [[] for _ in queries]
        found = self.client.query(self.name, filter=expr, output_fields=["vector", "metadata"], limit=count)
        # Plain tuples: pymilvus's lazy result list does not reorder its rows with sort().
        rows = sorted((row["image_id"], row["vector"], dict(row["metadata"])) for row in found)
        vectors = np.asarray([row[1] for row in rows], dtype=np.float32)
        out = []
        for scores in queries @ vectors.T:
            order = np.lexsort((np.arange(len(rows)), -scores))[:k]
            out.append([Hit(rows[i][0], float(scores[i]), dict(rows[i][2])) for i in order])
        return out

    def _one(self, image_id: str, field: str) -> Any | None:
        if self.dim is None:
            return None
        rows = self.client.get(self.name, ids=[image_id], output_fields=[field])
        return rows[0][field] if rows else None

    def vector(self, image_id: str) -> np.ndarray | None:
        found = self._one(image_id, "vector")
        return None if found is None else np.asarray(found, dtype=np.float32)

    def get(self, image_id: str) -> dict[str, str] | None:
        found = self._one(image_id, "metadata")
        return None if found is None else dict(found)

    def images(self, filters: flt.Filters | None = None) -> Iterator[tuple[str, dict[str, str]]]:
        """Every live image matching `filters`, with its metadata, read in batches."""
        if self.dim is None:
            return
        wanted = flt.normalise(filters)
        expr = self._expression(wanted) if wanted else ""
        iterator = self.client.query_iterator(
            self.name, batch_size=10_000, filter=expr, output_fields=["image_id", "metadata"]
        )
        try:
            while batch := iterator.next():
                for row in batch:
                    yield str(row["image_id"]), dict(row["metadata"])
        finally:
            iterator.close()

    def _expression(self, wanted: flt.Wanted) -> str:
        if not self.has_numbers and flt.split(wanted)[1]:
            raise ValueError(
                f"Milvus collection {self.name!r} predates numeric filters (no {NUMBERS!r} column): re-index it"
            )
        return expression(wanted)

    def stats(self, filters: flt.Filters | None = None) -> IndexStats:
        """Counts by facet value, read with an iterator: O(rows), fine for a stats page, not for a hot path."""
        counts = {field_: Counter[str]() for field_ in flt.FIELDS}
        images = 0
        wanted = flt.normalise(filters)
        if self.dim is not None:
            iterator = self.client.query_iterator(
                self.name,
                batch_size=10_000,
                filter=self._expression(wanted) if wanted else "",
                output_fields=list(_FACET.values()),
            )
            try:
                while batch := iterator.next():
                    images += len(batch)
                    for row in batch:
                        for field_, column in _FACET.items():
                            if row[column]:
                                counts[field_][row[column]] += 1
            finally:
                iterator.close()
        return IndexStats(
            images=images,
            kind=f"milvus/{self.config.index_type.lower()}",
            by_field={field_: dict(counter) for field_, counter in counts.items()},
        )

    def dump(self) -> bytes:
        """Flush to Milvus's storage; the manifest names what a restore reconnects to."""
        if self.dim is not None:
            self.client.flush(self.name)
        manifest = {"format": FORMAT, "collection": self.name, "dim": self.dim, "images": len(self)}
        return json.dumps(manifest).encode()

    @classmethod
    def load(cls, data: bytes, config: MilvusConfig | None = None) -> MilvusIndex:
        manifest = json.loads(data) if data else {"format": FORMAT, "collection": None}
        if manifest.get("format") != FORMAT:
            raise ValueError(f"not a taxonstream Milvus manifest: {manifest.get('format')!r}")
        config = config or MilvusConfig()
        if manifest["collection"] not in (None, config.collection):
            raise ValueError(f"snapshot is of collection {manifest['collection']!r}, configured {config.collection!r}")
        return cls(config)

    def drop(self) -> None:
        """Remove the collection and everything in it (tests, re-indexing under a new model)."""
        if self.client.has_collection(self.name):
            self.client.drop_collection(self.name)
        self.dim = None

    def close(self) -> None:
        self.client.close()
        if _is_lite(self.config.uri):
            # Milvus Lite serves a file from a thread of this process: stop it with the client.
            from milvus_lite import server_manager_instance

            server_manager_instance.release_server(self.config.uri)


def _is_lite(uri: str) -> bool:
    return uri.endswith(".db") and "://" not in uri
