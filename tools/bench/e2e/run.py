"""End to end: the hand-glued chain against the running stack, on the same URL list, in one invocation.

    .venv/bin/python -m tools.bench.e2e.run --images small              # 2,150 records (the issue's job)
    .venv/bin/python -m tools.bench.e2e.run --images photo              # 300 records of 1.2-1.7 MB photos
    .venv/bin/python -m tools.bench.e2e.run --records 200 --only script # a quick look at one side

A benchmark, not a test: it prints figures and asserts nothing (it does say whether the counts agree).
Needs the local stack up with its fetcher allowing 127.0.0.0/8 (`--allow-network 127.0.0.0/8`).

The job (default, --images small): 2,000 distinct JPEGs on 8 loopback hosts (127.0.2.10-17), 100 exact
duplicates of them from 2 other hosts (127.0.2.30-31), 50 URLs answering 404, shuffled. --records N keeps
those proportions. Every run draws its own images (seeded by the run id; a JPEG comment names the run), so
the stack has never seen the pixels, the bytes or the URLs.

  script     tools/bench/e2e/script.py: 32 urllib3 threads, sha256+md5, pHash, detector + CLIP encoder in
             onnxruntime on the stack's own ONNX files, FAISS IndexFlatIP; nothing kept
  pipeline   SubmitJob to the fetcher (what `taxonstream ingest` does) with a fresh job id, GetJob until
             every record ended; time from submit to the last outcome

Printed: records/s of each (all records, failures included, over wall time), good (indexed + duplicate)
and failed counts, the ratio pipeline / script, load average before and after each side, and per stage
the busy seconds per good record read from the services' /metrics (see pipeline.STAGE_METRICS), or the
script's own per-part busy seconds (summed over its threads). --out writes all of it as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from taxonstream.core.local_stack import model_repository
from tools.bench.e2e import cpu, images, pipeline, sites
from tools.bench.e2e.script import PARTS, GluedChain

# The job: 2,000 distinct + 100 duplicates + 50 missing = 2,150; --records scales these shares.
SHARES = {"image": 2000 / 2150, "duplicate": 100 / 2150}
DEFAULT_RECORDS = {"small": 2150, "photo": 300}


def split(records: int) -> tuple[int, int, int]:
    distinct = max(1, round(records * SHARES["image"]))
    duplicates = min(distinct, round(records * SHARES["duplicate"]))
    return distinct, duplicates, max(0, records - distinct - duplicates)


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def run_script(plan: images.Plan, threads: int) -> dict:
    chain = GluedChain(model_repository(), threads)
    before, cpu_before = load(), cpu.own_cpu()
    result = chain.run([e.url for e in plan.entries])
    after, cpu_s = load(), cpu.own_cpu() - cpu_before
    good = max(result.good, 1)
    return {
        "records": result.records,
        "indexed": result.indexed,
        "duplicate": result.duplicate,
        "good": result.good,
        "failed": result.failed,
        "failed_by_reason": dict(result.failed_by_reason),
        "seconds": round(result.seconds, 3),
        "records_per_s": round(result.records / result.seconds, 2),
        "busy_s_per_good_record": {p: round(result.busy[p] / good, 5) for p in PARTS},
        "cpu_ms_per_good_record_by_part": {p: round(result.cpu[p] * 1e3 / good, 2) for p in PARTS},
        "cpu_ms_per_record": {"script": round(cpu_s * 1e3 / result.records, 2)},
        "load_before": before,
        "load_after": after,
    }


def run_pipeline(plan: images.Plan, timeout_s: float) -> dict:
    job_id = f"bench-e2e-{plan.run_id}"
    scraped_before = pipeline.scrape_all()
    before, cpu_before = load(), cpu.stack_cpu()
    result = pipeline.run_job(job_id, [e.url for e in plan.entries], [e.host for e in plan.entries], timeout_s)
    after = load()
    time.sleep(1.0)  # the last batches' histograms are observed just after their outputs flush
    scraped_after = pipeline.scrape_all()
    spent = cpu.stack_cpu_delta(cpu_before, cpu.stack_cpu())  # includes that second of idle polling
    return {
        "job_id": job_id,
        "done": result.done,
        "records": result.records,
        "indexed": result.indexed,
        "duplicate": result.duplicate,
        "good": result.good,
        "failed": result.failed,
        "failed_by_reason": result.failed_by_reason,
        "seconds": round(result.seconds, 3),
        "records_per_s": round(result.records / result.seconds, 2) if result.seconds > 0 else None,
        "busy_s_per_good_record": pipeline.busy_per_record(scraped_before, scraped_after, result.good),
        "metrics_unreachable": [s for s in pipeline.STAGES if scraped_after.get(s) is None],
        "cpu_ms_per_record": {g: round(v * 1e3 / result.records, 2) for g, v in sorted(spent.items())},
        "load_before": before,
        "load_after": after,
    }


def print_report(report: dict) -> None:
    sides = report["sides"]
    print(
        f"\n{report['records']} records ({report['set']}): {report['distinct']} distinct, "
        f"{report['duplicates']} duplicates, {report['missing']} missing; {report['cores']} cores"
    )
    print(f"{'side':<9} {'records/s':>9} {'seconds':>8} {'good':>5} {'failed':>6}   load before -> after")
    for name, side in sides.items():
        print(
            f"{name:<9} {fmt(side['records_per_s'], 1):>9} {side['seconds']:>8.1f} {side['good']:>5} "
            f"{side['failed']:>6}   {side['load_before']} -> {side['load_after']}"
        )
    for name, side in sides.items():
        parts = side["cpu_ms_per_record"]
        total = sum(parts.values())
        detail = ", ".join(f"{g} {v:.1f}" for g, v in parts.items())
        print(f"{name:<9} CPU ms / record {total:7.1f}   ({detail})")
    if "ratio" in report:
        print(f"ratio pipeline / script: {report['ratio']:.2f}   counts agree: {report['counts_agree']}")
    if "script" in sides:
        busy = sides["script"]["busy_s_per_good_record"]
        used = sides["script"]["cpu_ms_per_good_record_by_part"]
        print("\nscript per good record, summed over its threads: busy s | CPU ms")
        print("  ".join(f"{p} {busy[p]:.4f} | {used[p]:.1f}" for p in PARTS))
    if "pipeline" in sides:
        columns = list(pipeline.STAGE_METRICS)
        print("\npipeline busy s / good record, from /metrics")
        print(f"{'stage':<12}" + "".join(f"{c:>9}" for c in columns))
        for stage, row in sides["pipeline"]["busy_s_per_good_record"].items():
            print(f"{stage:<12}" + "".join(f"{fmt(row[c]):>9}" for c in columns))
        if sides["pipeline"]["metrics_unreachable"]:
            print(f"no /metrics answer from: {', '.join(sides['pipeline']['metrics_unreachable'])}")
        if not sides["pipeline"]["done"]:
            print(f"job {sides['pipeline']['job_id']} had not ended within --timeout: figures are partial")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", choices=sorted(images.SIZES), default="small", help="image set (default small)")
    parser.add_argument("--records", type=int, help="records in the job (default: small 2150, photo 300)")
    parser.add_argument("--only", choices=("script", "pipeline"), help="run one side only")
    parser.add_argument("--threads", type=int, default=32, help="the glued chain's fetch threads (default 32)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the job (default 1800)")
    parser.add_argument("--out", type=Path, help="write the report as JSON here too")
    parser.add_argument("--keep", action="store_true", help="keep this run's stamped images under .bench/e2e/")
    args = parser.parse_args(argv)
    records = args.records or DEFAULT_RECORDS[args.images]
    if records < 3:
        parser.error(f"--records must be at least 3, not {records}")
    if args.only != "script" and not pipeline.fetcher_serving():
        sys.exit("the fetcher is not serving: start the stack first (taxonstream stack up), or pass --only script")
    if args.only != "pipeline" and not (model_repository() / "models.json").is_file():
        sys.exit(f"{model_repository()}/models.json missing: start the stack first (taxonstream stack up)")

    distinct, duplicates, missing = split(records)
    run_id = time.strftime("%Y%m%d%H%M%S") + f"-{os.getpid()}"
    port = sites.free_port()
    plan = images.make_plan(
        args.images, distinct, duplicates, missing, sites.ORIGIN_HOSTS, sites.MIRROR_HOSTS, port, run_id
    )
    report: dict = {
        "set": args.images,
        "records": len(plan.entries),
        "distinct": distinct,
        "duplicates": duplicates,
        "missing": missing,
        "image_mb": round(plan.image_bytes / 1e6, 1),
        "run_id": run_id,
        "cores": os.cpu_count(),
        "sides": {},
    }
    print(f"run {run_id}: {len(plan.entries)} URLs, {report['image_mb']} MB of images, port {port}", flush=True)
    try:
        with sites.serving(plan.directory, port):
            if args.only != "pipeline":
                print("script …", flush=True)
                report["sides"]["script"] = run_script(plan, args.threads)
            if args.only != "script":
                print("pipeline …", flush=True)
                report["sides"]["pipeline"] = run_pipeline(plan, args.timeout)
    finally:
        if not args.keep:
            images.remove_run(plan)
    sides = report["sides"]
    if len(sides) == 2 and sides["pipeline"]["records_per_s"]:
        report["ratio"] = round(sides["pipeline"]["records_per_s"] / sides["script"]["records_per_s"], 3)
        report["counts_agree"] = all(sides["script"][k] == sides["pipeline"][k] for k in ("good", "failed"))
    print_report(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
