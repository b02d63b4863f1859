"""Soak: one long job through the running stack, watched for what must not grow with the collection.

    .venv/bin/python -m tools.bench.soak.run --records 100000        # the issue's soak (hours on 2 cores)
    .venv/bin/python -m tools.bench.soak.run --records 100000 --parts 10  # ten jobs of 10,000, one after another
    .venv/bin/python -m tools.bench.soak.run --records 2000 --checkpoints 500,1000,2000   # a quick look

A benchmark, not a test: it prints figures and asserts nothing. It draws `--records` small images (the e2e
bench's 400x300 set, new pixels every run, on all cores), serves them from the e2e bench's loopback farm with
its shares of exact duplicates (4.7 %) and 404s (2.3 %), submits them as one job, and reports:
  - records/s of each tenth of the job (from the outcomes' own timestamps) and last tenth / first tenth,
    or with `--parts`, of each part (submitted when the one before has ended) and last part / first part;
  - at each checkpoint (records ended): RSS of every service, and the S3 bytes stored per image so far
    (the OSD's `bluestore_stored` delta over images indexed: originals + derivatives + lineage + registry);
  - at the end: the index and registry snapshot bytes in S3 (all generations) against the latest one;
  - each service SIGKILLed and started again: seconds until its health check says SERVING.
Needs the stack up with its fetcher allowing 127.0.0.0/8; run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from taxonstream.cli import clients
from taxonstream.core.local_stack import stack_dir
from taxonstream.v1 import fetcher_pb2, fetcher_pb2_grpc
from tools.bench.e2e import cpu, images, pipeline, sites
from tools.stack import local_stack as stack

DUPLICATE_SHARE, MISSING_SHARE = 100 / 2150, 50 / 2150  # the e2e bench's job, scaled
POLL_S = 2.0


def _draw(args: tuple[int, str, str]) -> int:
    seed, run_id, path = args
    data = images.stamped(images._encode("small", seed), run_id)
    Path(path).write_bytes(data)
    return len(data)


def draw(directory: Path, count: int, run_id: str, workers: int) -> list[str]:
    """`count` new images in `directory` (10 ms each on one core), drawn on `workers` processes."""
    directory.mkdir(parents=True, exist_ok=True)
    base = images.run_seed(run_id)
    names = [f"{run_id}-{i:06d}.jpg" for i in range(count)]
    jobs = [(base + 7919 * i, run_id, str(directory / n)) for i, n in enumerate(names)]
    with ProcessPoolExecutor(workers, initializer=os.nice, initargs=(10,)) as pool:
        for done, _ in enumerate(pool.map(_draw, jobs, chunksize=200), start=1):
            if done % 10000 == 0:
                print(f"drawn {done}/{count}", flush=True)
    return names


def url_list(names: list[str], records: int, port: int, run_id: str) -> tuple[list[str], list[str]]:
    """The shuffled URLs and their hosts: every drawn image once, then mirror copies and 404s."""
    duplicates, missing = round(records * DUPLICATE_SHARE), round(records * MISSING_SHARE)
    origin, mirror = sites.ORIGIN_HOSTS, sites.MIRROR_HOSTS
    entries = [(origin[i % len(origin)], n) for i, n in enumerate(names)]
    step = max(1, len(names) // max(1, duplicates))
    entries += [(mirror[j % len(mirror)], names[j * step]) for j in range(duplicates)]
    entries += [(origin[j % len(origin)], f"{run_id}-gone-{j:06d}.jpg") for j in range(missing)]
    random.Random(run_id).shuffle(entries)
    return [f"http://{host}:{port}/img/{name}" for host, name in entries], [host for host, _ in entries]


def rss_mib() -> dict[str, float]:
    """Resident memory of each service (its pid file's process), MiB."""
    found: dict[str, float] = {}
    for spec in stack.SERVICES:
        pid = stack.service_pid(spec.name)
        try:
            status = Path(f"/proc/{pid}/status").read_text() if pid else ""
        except OSError:
            status = ""
        kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        found[spec.name] = round(kb / 1024, 1)
    return found


def stored_bytes() -> int:
    """Bytes BlueStore holds for every pool (the gateway's data, index and metadata): the OSD's counter."""
    socket = stack_dir() / "data" / "s3" / "run" / "ceph-osd.0.asok"
    out = subprocess.run(
        ["ceph", "--admin-daemon", str(socket), "perf", "dump"], capture_output=True, text=True, timeout=30, check=True
    )
    return int(json.loads(out.stdout)["bluestore"]["bluestore_stored"])


def _store():
    from taxonstream.core.settings import CoreSettings
    from taxonstream.core.store import ObjectStore

    return ObjectStore(CoreSettings(**{k.removeprefix("TAXONSTREAM_").lower(): v for k, v in stack.s3_env().items()}))


def _size(store, key: str) -> int:
    from minio.error import S3Error

    try:
        return store.client.stat_object(store.bucket_for(key), key).size or 0
    except S3Error:
        return 0  # not stored (a derivative that did not earn its bytes)


def bytes_per_image(job_id: str, sample: int = 300) -> dict[str, float]:
    """Mean bytes stored per image over `sample` of the job's images, by kind: the original, the detector's
    derivatives and lineage (every key derivative_keys names), and the bookkeeping objects of one image
    (its registry entry, URL entry and provenance); `ratio` = all of it / the original."""
    from taxonstream.core.keys import provenance_prefix, registry_key
    from taxonstream.core.store import derivative_keys
    from taxonstream.detector.worker import DetectorSettings
    from taxonstream.fetcher.worker import url_key
    from taxonstream.v1 import indexer_pb2, indexer_pb2_grpc

    detector = DetectorSettings()
    store = _store()
    totals = {"original": 0, "derivatives": 0, "lineage": 0, "bookkeeping": 0}
    seen = 0
    with clients.channel("indexer") as channel:
        listing = indexer_pb2_grpc.IndexerStub(channel).ListImages(indexer_pb2.ListImagesRequest(job_id=job_id))
        for hit in listing:
            meta = hit.metadata
            keys = derivative_keys(hit.image_id, detector.detector_model, detector.detector_model_version)
            totals["original"] += _size(store, meta["original_key"])
            totals["lineage"] += _size(store, keys.pop("lineage"))
            totals["derivatives"] += sum(_size(store, k) for k in keys.values())
            provenance = store.client.list_objects(store.bucket, prefix=provenance_prefix(hit.image_id), recursive=True)
            totals["bookkeeping"] += _size(store, registry_key(meta["sha256"])) + _size(store, url_key(meta["url"]))
            totals["bookkeeping"] += sum(item.size or 0 for item in provenance)
            seen += 1
            if seen >= sample:
                break
    means = {kind: round(total / max(1, seen)) for kind, total in totals.items()}
    means["ratio"] = round(sum(totals.values()) / max(1, totals["original"]), 3)
    means["sampled"] = seen
    return means


def snapshot_bytes() -> dict[str, dict[str, int]]:
    """Per snapshot family (an index version, the registry, job progress): bytes of all its objects and of
    its newest generation (core/keys.py: <prefix>snapshots/<generation>.<part> beside <prefix>latest.json)."""
    store = _store()
    families: dict[str, dict] = {}
    for prefix in ("index/", "registry/snapshot/", "job-progress/"):
        for item in store.client.list_objects(store.bucket, prefix=prefix, recursive=True):
            family, marker, rest = item.object_name.partition("snapshots/")
            entry = families.setdefault(family if marker else prefix, {"all": 0, "objects": 0, "by_generation": {}})
            entry["all"] += item.size or 0
            entry["objects"] += 1
            if marker:
                generation = rest.partition(".")[0]
                entry["by_generation"][generation] = entry["by_generation"].get(generation, 0) + (item.size or 0)
    for entry in families.values():
        by_generation = entry.pop("by_generation")
        entry["generations"] = len(by_generation)
        entry["latest"] = by_generation[max(by_generation)] if by_generation else entry["all"]
    return families


def restart_seconds(timeout: float = 120.0) -> dict[str, float | None]:
    """Each service SIGKILLed, then started again (by the supervisor, or here): seconds until SERVING."""
    found: dict[str, float | None] = {}
    for spec in stack.SERVICES:
        stack.kill_service(spec.name)
        started = time.monotonic()
        try:
            stack.start_service(spec, ["127.0.0.0/8"] if spec.name == "fetcher" else (), timeout=timeout)
            found[spec.name] = round(time.monotonic() - started, 2)
        except stack.StackError as error:
            print(f"{spec.name}: {error}", flush=True)
            found[spec.name] = None
    return found


def deciles(at_ms: list[int], submitted_ms: float) -> list[float]:
    """Records/s within each tenth of the records, ordered by when they ended."""
    at = sorted(at_ms)
    n = len(at)
    bounds = [round(n * k / 10) for k in range(11)]
    rates, previous = [], submitted_ms
    for k in range(10):
        end = at[bounds[k + 1] - 1]
        rates.append((bounds[k + 1] - bounds[k]) / max(1e-3, (end - previous) / 1000))
        previous = end
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000, help="records in the job (default 100,000)")
    parser.add_argument("--checkpoints", default="", help="ended-record counts to sample at (default 10%%,50%%,100%%)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="processes drawing images")
    parser.add_argument("--no-restarts", action="store_true", help="skip the kill-and-restart of each service")
    parser.add_argument("--draw-only", type=Path, metavar="DIR", help="only draw the images into DIR, then exit")
    parser.add_argument("--images", type=Path, metavar="DIR", help="images drawn before with --draw-only (used once)")
    parser.add_argument(
        "--parts",
        type=int,
        default=1,
        help="submit the list as this many jobs, each when the one before has ended (default 1: one job); "
        "each part's records/s is then the pipeline's steady rate at that collection size",
    )
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.parts < 1 or args.parts > args.records:
        parser.error(f"--parts must be between 1 and --records ({args.records}), got {args.parts}")
    records = args.records
    checkpoints = [int(c) for c in args.checkpoints.split(",") if c] or [records // 10, records // 2, records]
    distinct = records - round(records * DUPLICATE_SHARE) - round(records * MISSING_SHARE)
    if args.images:  # drawn earlier, so drawing 100k images (~8 min on 2 cores) is not in the soak's window
        names = sorted(p.name for p in args.images.glob("*.jpg"))[:distinct]
        if len(names) < distinct:
            parser.error(f"{args.images} has {len(names)} images; {records} records need {distinct}")
        directory, run_id = args.images, names[0].rsplit("-", 1)[0]
    else:
        run_id = time.strftime("%Y%m%d%H%M%S") + f"-{os.getpid()}"
        directory = args.draw_only or images.CACHE.parent / "soak" / f"run-{run_id}"
        started = time.monotonic()
        names = draw(directory, distinct, run_id, args.workers)
        print(f"drew {distinct} images in {time.monotonic() - started:.0f} s into {directory}", flush=True)
        if args.draw_only:
            return 0
    port = sites.free_port()
    urls, hosts = url_list(names, records, port, run_id)
    report: dict = {"records": records, "distinct": distinct, "run_id": run_id, "parts": args.parts, "checkpoints": []}
    parts = [(urls[i :: args.parts], hosts[i :: args.parts]) for i in range(args.parts)]
    base_job = f"bench-soak-{run_id}"
    with sites.serving(directory, port), clients.channel("fetcher") as channel:
        stub = fetcher_pb2_grpc.FetcherStub(channel)
        stored_at_start = stored_bytes()
        pending = list(checkpoints)
        since, cpu_since = 0, cpu.stack_cpu()  # CPU per record between checkpoints: cost as N grows
        totals = {"indexed": 0, "duplicate": 0, "failed": 0}
        at_ms: list[int] = []
        part_rates: list[float] = []
        first_submit_ms = time.time() * 1000
        for number, (part_urls, part_hosts) in enumerate(parts):
            job_id = base_job if args.parts == 1 else f"{base_job}-p{number}"
            submitted_ms = time.time() * 1000
            status = stub.SubmitJob(pipeline._requests(job_id, part_urls, part_hosts), timeout=3600)
            while True:
                ended = sum(totals.values()) + status.indexed + status.duplicate + status.failed
                while pending and (ended >= pending[0] or (status.done and number == len(parts) - 1)):
                    indexed = totals["indexed"] + status.indexed
                    point = {"ended": ended, "indexed": indexed, "rss_mib": rss_mib()}
                    spent = cpu.stack_cpu_delta(cpu_since, cpu_now := cpu.stack_cpu())
                    point["cpu_ms_per_record_since_last"] = {
                        g: round(1000 * t / max(1, ended - since), 1) for g, t in sorted(spent.items())
                    }
                    since, cpu_since = ended, cpu_now
                    # The OSD's counter counts snapshot churn too (the gateway frees deleted objects' data later).
                    point["osd_bytes_per_image"] = round((stored_bytes() - stored_at_start) / max(1, indexed))
                    point["stored_per_image"] = bytes_per_image(job_id)
                    report["checkpoints"].append(point)
                    print(json.dumps(point), flush=True)
                    pending.pop(0)
                if status.done:
                    break
                time.sleep(POLL_S)
                status = stub.GetJob(fetcher_pb2.GetJobRequest(job_id=job_id), timeout=30)
            request = fetcher_pb2.ListOutcomesRequest(job_id=job_id)
            part_at = [o.at_ms for o in stub.ListOutcomes(request, timeout=600)]
            at_ms += part_at
            part_rates.append(len(part_at) / max(1e-3, (max(part_at) - submitted_ms) / 1000))
            if args.parts > 1:
                print(f"part {number + 1}/{args.parts}: {part_rates[-1]:.1f} records/s", flush=True)
            for kind in totals:  # the parts before the next one
                totals[kind] += getattr(status, kind)
    # One job: tenths by when records ended. Parts: each part's own rate (a part starts when the last ended).
    rates = deciles(at_ms, first_submit_ms) if args.parts == 1 else part_rates
    report.update(
        **totals,
        seconds=round((max(at_ms) - first_submit_ms) / 1000, 1),
        decile_records_per_s=[round(r, 1) for r in rates] if args.parts == 1 else None,
        part_records_per_s=[round(r, 1) for r in rates] if args.parts > 1 else None,
        last_over_first=round(rates[-1] / rates[0], 3),
        image_bytes=sum((directory / n).stat().st_size for n in names) // max(1, distinct),
        snapshots=snapshot_bytes(),
    )
    print(json.dumps({k: v for k, v in report.items() if k != "checkpoints"}, indent=1), flush=True)
    if not args.no_restarts:
        report["restart_to_serving_s"] = restart_seconds()
        print("restart to SERVING, s:", json.dumps(report["restart_to_serving_s"]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    subprocess.run(["rm", "-rf", str(directory)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
