"""One export: assign the split, read each image's object from S3, write shards, then the manifest.

Nothing is dropped silently: an image whose object is missing (or unreadable) is left out of the shards
and written to `errors.jsonl` with its split and reason; the manifest counts it. Objects are read by a
few threads at once (S3 latency, not CPU, is the limit), and written in the selection's order.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from taxonstream.core.errors import Failed, Transient
from taxonstream.export.content import MissingContent, box_to_cut, content_key, cut_crop, extension
from taxonstream.export.select import Item, Selection
from taxonstream.export.split import assign, stratum
from taxonstream.export.writers import Sample, ShardedWriter

MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"


class Store(Protocol):
    def get(self, key: str) -> bytes: ...


@dataclass(frozen=True)
class Plan:
    format: str
    content: str = "original"
    chunk_size: int = 10_000
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    seed: int = 0
    by_split: bool = False
    with_vectors: bool = False
    name: str = "export"
    workers: int = 8
    retries: int = 3  # tries for an S3 outage before the image is recorded as an error


class ExportError(ValueError):
    pass


def prepare(out: Path) -> None:
    """The export folder: new or empty, so shards of two exports never mix."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty folder; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)


def _read(store: Store, key: str, retries: int) -> bytes:
    for attempt in range(retries):
        try:
            return store.get(key)
        except Transient:
            if attempt == retries - 1:
                raise
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def _fetch(store: Store, item: Item, content: str, retries: int) -> tuple[str, bytes | None, str]:
    """(key, bytes, '') or (key, None, reason)."""
    try:
        key = content_key(content, item.image_id, item.metadata)
        box = box_to_cut(content, item.metadata)
    except (MissingContent, Failed) as error:
        return "", None, f"no_object: {error}"
    try:
        data = _read(store, key, retries)
        return key, data if box is None else cut_crop(data, box), ""
    except KeyError:
        return key, None, "missing: the object is not in S3"
    except Transient as error:
        return key, None, f"unavailable: {error}"
    except Exception as error:  # an S3 refusal for one object must not end the export of the others
        return key, None, f"unreadable: {type(error).__name__}: {error}"


def _in_order(
    pool: ThreadPoolExecutor, items: list[Item], work: Callable[[Item], Any], window: int
) -> Iterator[tuple[Item, Any]]:
    """Results in the items' order with at most `window` reads in flight (bounded memory)."""
    pending: deque[tuple[Item, Future]] = deque()
    for item in items:
        pending.append((item, pool.submit(work, item)))
        if len(pending) >= window:
            first, future = pending.popleft()
            yield first, future.result()
    while pending:
        first, future = pending.popleft()
        yield first, future.result()


def _record(item: Item, split: str, content: str, key: str) -> dict[str, Any]:
    record: dict[str, Any] = {
        "image_id": item.image_id,
        "split": split,
        "content": content,
        "object_key": key,
        "species": stratum(item.metadata),
        "metadata": dict(sorted(item.metadata.items())),
    }
    if item.rank is not None:
        record["rank"], record["score"] = item.rank, item.score
    return record


def export(
    selection: Selection, plan: Plan, store: Store, out: Path, query: dict[str, Any], progress: bool = True
) -> dict[str, Any]:
    """Write the shards, `errors.jsonl` and `manifest.json` into `out` (prepared); returns the manifest."""
    started = time.monotonic()
    items = selection.items
    splits = assign([i.image_id for i in items], [stratum(i.metadata) for i in items], plan.fractions, plan.seed)
    split_of = {item.image_id: split for item, split in zip(items, splits, strict=True)}
    writer = ShardedWriter(out, plan.name, plan.format, plan.chunk_size, plan.by_split)
    exported: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    image_bytes = 0
    dimension = None

    def work(item: Item) -> tuple[str, bytes | None, str]:
        return _fetch(store, item, plan.content, plan.retries)

    with (
        open(out / ERRORS, "w", encoding="utf-8") as errors,
        ThreadPoolExecutor(max_workers=max(1, plan.workers)) as pool,
        tqdm(total=len(items), unit="img", desc="export", disable=not progress, mininterval=0.5) as bar,
    ):
        for item, (key, data, reason) in _in_order(pool, items, work, window=4 * max(1, plan.workers)):
            split = split_of[item.image_id]
            if data is not None and plan.with_vectors and item.vector is None:
                data, reason = None, "no_vector: the index holds no embedding for this image"
            if data is None:
                reasons[reason.split(":", 1)[0]] += 1
                line = {"image_id": item.image_id, "split": split, "content": plan.content, "object_key": key}
                errors.write(json.dumps({**line, "reason": reason}, sort_keys=True) + "\n")
            else:
                vector = item.vector if plan.with_vectors else None
                if vector is not None:
                    dimension = int(vector.shape[0])
                record = _record(item, split, plan.content, key)
                writer.add(Sample(item.image_id, data, extension(data, key), record, split, vector))
                exported[split] += 1
                image_bytes += len(data)
            bar.update(1)
    shards = writer.close()
    seconds = time.monotonic() - started
    manifest: dict[str, Any] = {
        "format": plan.format,
        "content": plan.content,
        "query": query,
        "model": selection.model,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "split": {
            "fractions": dict(zip(("train", "val", "test"), plan.fractions, strict=True)),
            "seed": plan.seed,
            "stratified_by": "species",
            "shards_by_split": plan.by_split,
        },
        "chunk_size": plan.chunk_size,
        "counts": {
            "selected": len(items),
            "exported": sum(exported.values()),
            "errors": sum(reasons.values()),
            "by_split": {s: exported.get(s, 0) for s in ("train", "val", "test")},
            "errors_by_reason": dict(sorted(reasons.items())),
        },
        "vectors": {"dimension": dimension} if plan.with_vectors else None,
        "shards": [asdict(s) for s in shards],
        "errors_file": ERRORS,
        "image_bytes": image_bytes,
        "seconds": round(seconds, 3),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest
