"""Index benchmark: the product's FAISS index against exact FAISS flat search, in one run.

    .venv/bin/python tools/bench/index/run.py                 # 1M × 512, the issue's figure
    .venv/bin/python tools/bench/index/run.py --n 200000      # what fits a small machine

Data: clustered unit vectors shaped like a taxonomy — genus centres, species centres around them, images
around their species — generated in chunks from fixed seeds, with genus/species/provider metadata.
Queries are fresh draws from the same distribution (not stored vectors).

Reports, for the same data and queries:
- ingest: vectors/s through `FaissIndex.upsert_many` in batches of 10,000 (the path the indexer's worker
  takes), and FAISS flat's add for comparison; the flat → HNSW migration at 100k runs in the background, so
  the figure includes waiting for it at the end, and the slowest single batch (the write path's latency)
  is reported beside it;
- memory: the process's resident-memory growth per vector during ingest (index + ids + metadata + filter
  indexes), and the snapshot's bytes per vector;
- search: recall@10 against exact search and queries/s, one query per call (as the gRPC service answers)
  and in one batch, for FAISS flat and for the product index at several efSearch values;
- filtered search: one genus (0.2%, exact over the gathered matches), 3% of the genera (exact, FAISS's
  flat scan with the bitmap) and one provider of three (HNSW with an IDSelector): recall@10 against
  exact filtered search, and queries/s;
- concurrency: queries/s one per call from 1, 2, … threads at once (searches share a read lock);
- snapshot: dump and load times, and whether the loaded index answers exactly as the original.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

from taxonstream.index.backend import FaissConfig
from taxonstream.index.faiss_engine import FaissIndex

PROVIDERS = ("iDigBio", "GBIF", "BOLD")


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Taxonomy:
    """Genus and species centres; images are drawn around a species centre."""

    def __init__(self, dim: int, genera: int, species_per_genus: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.dim, self.species_per_genus = dim, species_per_genus
        genus = _unit(rng.normal(size=(genera, dim)))
        # A species sits near its genus: congeneric images are the hard near-misses, as in real collections.
        self.species = _unit(
            np.repeat(genus, species_per_genus, axis=0)
            + 0.6 * _unit(rng.normal(size=(genera * species_per_genus, dim)))
        )

    def draw(self, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        labels = rng.integers(len(self.species), size=count)
        noise = _unit(rng.normal(size=(count, self.dim)).astype(np.float32))
        return _unit(self.species[labels] + 0.8 * noise).astype(np.float32), labels


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]))


def timed_each(search, queries: np.ndarray) -> tuple[list, float]:
    """Answers and queries/s, one query per call."""
    out, start = [], time.perf_counter()
    for query in queries:
        out.append(search(query))
    return out, len(queries) / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--flat-single", type=int, default=200, help="queries timed one by one on flat (slow)")
    ap.add_argument("--genera", type=int, default=500)
    ap.add_argument("--species-per-genus", type=int, default=20)
    ap.add_argument("--ef", default="64,128,192,256,384", help="efSearch (HNSW) or nprobe (IVF-PQ) values to sweep")
    ap.add_argument("--kind", choices=["flat", "hnsw", "ivfpq"], help="force the index type (default: by size)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=80)
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists (0: about 4·√n)")
    ap.add_argument("--pq-nbits", type=int, default=8)
    ap.add_argument("--threads", default="1,2", help="search threads to time together")
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    k = 10
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731

    taxonomy = Taxonomy(args.dim, args.genera, args.species_per_genus, args.seed)
    queries, query_species = taxonomy.draw(args.queries, seed=10**6 + args.seed)
    results: dict = {
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "k": k,
        "machine": {
            "cpus": os.cpu_count(),
            "faiss_threads": faiss.omp_get_max_threads(),
            "python": platform.python_version(),
            "faiss": faiss.__version__,
        },
        # Other work on the machine skews timings: the 1-minute load average at each phase says how much.
        "load_average": {"start": os.getloadavg()[0]},
        "config": {
            "kind": args.kind or "by size",
            "hnsw_m": args.hnsw_m,
            "ef_construction": args.ef_construction,
            "nlist": args.nlist or "auto",
            "pq_nbits": args.pq_nbits,
        },
    }

    # ---- ingest: the product index and flat, from the same chunks ----------------------------------
    config = FaissConfig(
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        kind=args.kind,
        nlist=args.nlist,
        pq_nbits=args.pq_nbits,
    )
    index, flat = FaissIndex(config=config), faiss.IndexFlatIP(args.dim)
    species = np.empty(args.n, dtype=np.int64)
    generate = ingest = flat_add = slowest = 0.0
    rss_before = rss_bytes()
    for start in range(0, args.n, args.batch):
        t0 = time.perf_counter()
        count = min(args.batch, args.n - start)
        vectors, labels = taxonomy.draw(count, seed=args.seed * 7919 + start)
        species[start : start + count] = labels
        ids = [f"{n:064x}" for n in range(start, start + count)]
        metadata = [
            {
                "genus": f"G{label // args.species_per_genus}",
                "species": f"G{label // args.species_per_genus} s{label % args.species_per_genus}",
                "provider": PROVIDERS[n % 3],
            }
            for n, label in zip(range(start, start + count), labels, strict=True)
        ]
        t1 = time.perf_counter()
        index.upsert_many(ids, vectors, metadata)
        t2 = time.perf_counter()
        flat.add(vectors)
        t3 = time.perf_counter()
        generate, ingest, flat_add = generate + t1 - t0, ingest + t2 - t1, flat_add + t3 - t2
        slowest = max(slowest, t2 - t1)
        if (start // args.batch) % 10 == 0:
            rate = (start + count) / ingest
            log(f"ingested {start + count:>9,}  kind={index.kind} building={index.migrating}  {rate:,.0f} vectors/s")
    t0 = time.perf_counter()
    index.settle()  # a background rebuild still under way is part of the ingest
    settle = time.perf_counter() - t0
    ingest += settle
    rss_growth = rss_bytes() - rss_before - flat.ntotal * args.dim * 4  # the flat baseline is not ours
    results["ingest"] = {
        "kind": index.kind,
        "product_vectors_per_s": args.n / ingest,
        "flat_add_vectors_per_s": args.n / flat_add,
        "seconds": ingest,
        "waiting_for_background_rebuild_seconds": settle,
        "slowest_batch_seconds": slowest,
        "rss_growth_bytes_per_vector": rss_growth / args.n,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    results["load_average"]["after_ingest"] = os.getloadavg()[0]
    log(json.dumps(results["ingest"]))

    # ---- exact truth and flat's speed ------------------------------------------------------------
    # FAISS switches a batch to BLAS at 20 queries; with the wheel's OpenBLAS on some CPUs its own SIMD
    # kernel is faster. The baseline is flat at its best: time both, keep the faster.
    batch_qps = {}
    default_threshold = faiss.cvar.distance_compute_blas_threshold
    for name, threshold in (("blas", default_threshold), ("simd", 1 << 30)):
        faiss.cvar.distance_compute_blas_threshold = threshold
        t0 = time.perf_counter()
        _, truth = flat.search(queries, k)
        batch_qps[name] = len(queries) / (time.perf_counter() - t0)
    faiss.cvar.distance_compute_blas_threshold = default_threshold
    flat_batch_qps = max(batch_qps.values())
    single = queries[: args.flat_single]
    _, flat_single_qps = timed_each(lambda q: flat.search(q.reshape(1, -1), k), single)
    results["flat"] = {"batch_qps": flat_batch_qps, "batch_qps_by_kernel": batch_qps, "single_qps": flat_single_qps}
    log(json.dumps(results["flat"]))

    # ---- the product index at several efSearch values --------------------------------------------
    sweep = []
    knob = "nprobe" if index.kind == "ivfpq" else "ef_search"
    for ef in (int(e) for e in args.ef.split(",")):
        index.config = replace(config, **{knob: ef})
        answers, single_qps = timed_each(lambda q: index.search(q, k), queries)
        found = np.array([[int(h.image_id, 16) for h in hits] for hits in answers])
        t0 = time.perf_counter()
        index.search_many(queries, k)
        batch_qps = len(queries) / (time.perf_counter() - t0)
        row = {
            knob: ef,
            "recall_at_10": recall_at(found, truth, k),
            "single_qps": single_qps,
            "batch_qps": batch_qps,
            "single_speedup_vs_flat": single_qps / flat_single_qps,
            "batch_speedup_vs_flat": batch_qps / flat_batch_qps,
        }
        sweep.append(row)
        log(json.dumps(row))
    results[index.kind] = sweep
    index.config = config

    # ---- filtered search: one genus (exact, gathered), 3% of genera (exact, flat scan with the bitmap),
    # one provider of three (HNSW with an IDSelector). Truth first, then the timed searches alone: a
    # 1M-row truth scan between timed queries would evict what they had cached.
    filtered = []
    genus_of = species // args.species_per_genus
    some_genera = max(1, args.genera * 3 // 100)
    for name, filters, mask_of in (
        (
            "one genus",
            lambda q: {"genus": [f"G{q // args.species_per_genus}"]},
            lambda q: genus_of == q // args.species_per_genus,
        ),
        (
            f"{some_genera} genera",
            lambda q: {"genus": [f"G{g}" for g in range(some_genera)]},
            lambda q: genus_of < some_genera,
        ),
        ("one provider of three", lambda q: {"provider": [PROVIDERS[1]]}, lambda q: np.arange(args.n) % 3 == 1),
    ):
        subset, labels = queries[:200], query_species[:200]
        truth_rows, shares = [], []
        for query, label in zip(subset, labels, strict=True):
            allowed = mask_of(label)
            shares.append(allowed.mean())
            bits = np.packbits(allowed, bitorder="little")
            sel = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
            truth_rows.append(flat.search(query.reshape(1, -1), k, params=faiss.SearchParameters(sel=sel))[1][0])
        t0 = time.perf_counter()
        answers = [index.search(query, k, filters(label)) for query, label in zip(subset, labels, strict=True)]
        elapsed = time.perf_counter() - t0
        recalls = [
            len({int(h.image_id, 16) for h in hits} & set(truth.tolist())) / k
            for hits, truth in zip(answers, truth_rows, strict=True)
        ]
        row = {
            "filter": name,
            "matching_share": float(np.mean(shares)),
            "recall_at_10": float(np.mean(recalls)),
            "single_qps": len(subset) / elapsed,
        }
        filtered.append(row)
        log(json.dumps(row))
    results["filtered"] = filtered

    # ---- concurrency: one query per call from several threads at once ------------------------------
    concurrent = []
    for threads in (int(t) for t in args.threads.split(",")):
        share = np.array_split(queries, threads)
        t0 = time.perf_counter()
        workers = [threading.Thread(target=lambda part: [index.search(q, k) for q in part], args=(p,)) for p in share]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        row = {"threads": threads, "single_qps": len(queries) / (time.perf_counter() - t0)}
        concurrent.append(row)
        log(json.dumps(row))
    results["concurrent"] = concurrent
    results["load_average"]["after_search"] = os.getloadavg()[0]

    # ---- snapshot: what a restarted replica loads before replaying the topic --------------------------
    flat.reset()  # its 2 KB a vector are no longer needed
    probe = [index.search(q, k) for q in queries[:50]]
    t0 = time.perf_counter()
    blob = index.dump()
    dump_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    restored = FaissIndex.load(blob, config)
    load_s = time.perf_counter() - t0
    results["snapshot"] = {
        "bytes_per_vector": len(blob) / args.n,
        "dump_seconds": dump_s,
        "load_seconds": load_s,
        "answers_identical": [restored.search(q, k) for q in queries[:50]] == probe,
    }
    log(json.dumps(results["snapshot"]))

    print(json.dumps(results, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
