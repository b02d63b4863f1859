"""Fault runner: ingest a generated list while SIGKILLing services, the broker, the S3 gateway and Triton at
random, then audit what came out. A tool for a person (see README.md here), not a test.

    .venv/bin/python tools/chaos/run.py --records 2000 --duration 600 --every 8 --report chaos.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from taxonstream.cli import clients
from taxonstream.core.bus import Bus, decode
from taxonstream.core.local_stack import REPO
from taxonstream.core.settings import CoreSettings
from taxonstream.v1 import fetcher_pb2, fetcher_pb2_grpc, indexer_pb2, indexer_pb2_grpc
from taxonstream.v1.messages_pb2 import Outcome
from tools.chaos import faults
from tools.demo.sample import make_images, serve, write_url_list


@dataclass
class Fault:
    victim: str
    at: float  # seconds since the run started
    pid: int | None
    back_s: float | None = None  # kill -> the victim answers again
    all_serving_s: float | None = None  # kill -> all five services SERVING again


@dataclass
class Watch:
    """Service exits the runner did not cause (a process gone whose pid was not killed here)."""

    killed: set[int] = field(default_factory=set)
    exits: list[dict] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        last = {name: faults.pid_of(faults.VICTIMS[name]) for name in faults.SERVICES}
        while not stop.wait(0.5):
            for name in faults.SERVICES:
                pid = faults.pid_of(faults.VICTIMS[name])
                gone = last[name]
                if gone is not None and pid != gone and gone not in self.killed:
                    self.exits.append({"service": name, "pid": gone, "last_log_line": faults.log_tail(name)})
                last[name] = pid


def _recover(fault: Fault, started: float, timeout: float) -> None:
    victim = faults.VICTIMS[fault.victim]
    killed_at = started + fault.at
    threading.Thread(target=faults.restart, args=(victim,), daemon=True).start()
    deadline = killed_at + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        if fault.back_s is None and faults.answers(victim):
            fault.back_s = now - killed_at
        if fault.back_s is not None and faults.all_serving():
            fault.all_serving_s = now - killed_at
            return
        time.sleep(0.25)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def _ingest(csv_path: Path, job: str) -> None:
    command = [sys.executable, "-m", "taxonstream.cli.main", "ingest", str(csv_path), "--job-id", job, "--no-wait"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"chaos: ingest failed: {done.stderr.strip() or done.stdout.strip()}")


def _job_status(job: str) -> fetcher_pb2.JobStatus | None:
    try:
        with clients.channel("fetcher") as channel:
            stub = fetcher_pb2_grpc.FetcherStub(channel)
            return stub.GetJob(fetcher_pb2.GetJobRequest(job_id=job), timeout=10)
    except Exception:  # noqa: BLE001 - a service down mid-fault is expected here; ask again later
        return None


def _audit(bus: Bus, job: str, rows: int, start: dict) -> dict:
    """Outcomes from the topic (every message, duplicates included) and the index's images of the job."""
    per_row: dict[int, list[Outcome]] = defaultdict(list)
    consumer = bus.reader([bus.topics.outcomes], start)
    try:
        ends = consumer.end_offsets(list(consumer.assignment()))
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    outcome = decode(record.value, record.headers, Outcome)
                    if outcome.job_id == job:
                        per_row[int(outcome.record_id.rsplit(":", 1)[1])].append(outcome)
    finally:
        consumer.close(autocommit=False)
    lost = [r for r in range(rows) if r not in per_row]
    doubled = [r for r, seen in per_row.items() if len({(o.state, o.image_id) for o in seen}) > 1]
    repeated = sum(len(seen) - 1 for seen in per_row.values())
    wrong = {
        r: f"{Outcome.State.Name(seen[-1].state)} {seen[-1].stage} {seen[-1].reason}".strip()
        for r, seen in per_row.items()
        if seen[-1].state != Outcome.INDEXED
    }
    indexed_ids = {seen[-1].image_id for seen in per_row.values() if seen[-1].state == Outcome.INDEXED}
    with clients.channel("indexer") as channel:
        listed = Counter(
            h.image_id
            for h in indexer_pb2_grpc.IndexerStub(channel).ListImages(
                indexer_pb2.ListImagesRequest(job_id=job), timeout=300
            )
        )
    return {
        "records": rows,
        "lost": len(lost),
        "lost_rows": lost[:50],
        "doubled": len(doubled),
        "doubled_rows": doubled[:50],
        "repeated_messages": repeated,  # the same outcome delivered again (at-least-once): not an error
        "wrong": len(wrong),
        "wrong_rows": dict(list(wrong.items())[:50]),
        "index_missing": len(indexed_ids - set(listed)),
        "index_doubled": sum(1 for n in listed.values() if n > 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tools/chaos/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--records", type=int, default=500, help="images in the generated list")
    p.add_argument("--duration", type=float, default=60, help="seconds of faults (the job may finish later)")
    p.add_argument("--every", type=float, default=8, help="mean seconds between faults (uniform ±50 %%)")
    p.add_argument("--targets", default=",".join(faults.VICTIMS), help="comma-separated victims")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, printed)")
    p.add_argument("--recovery-timeout", type=float, default=300, help="give up waiting for one fault's recovery")
    p.add_argument("--settle", type=float, default=1800, help="seconds after the faults for the job to finish")
    p.add_argument("--report", type=Path, help="write the report as JSON here")
    args = p.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if unknown := [t for t in targets if t not in faults.VICTIMS]:
        p.error(f"--targets: unknown {unknown}; choose from {sorted(faults.VICTIMS)}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    if not faults.all_serving():
        raise SystemExit("chaos: the stack is not up (`taxonstream stack up`)")

    from taxonstream.core.local_stack import s3_env

    settings = CoreSettings(**{k.removeprefix("TAXONSTREAM_").lower(): v for k, v in s3_env().items()})
    bus = Bus(settings)
    job = f"chaos-{seed}"
    with tempfile.TemporaryDirectory(prefix="chaos-") as folder:
        images = make_images(Path(folder) / "images", args.records, seed=seed)
        with serve(Path(folder) / "images") as base_url:
            csv_path = write_url_list(Path(folder) / "list.csv", base_url, images)
            start = bus.end_offsets(bus.topics.outcomes)
            print(f"chaos: seed {seed}, job {job}, {args.records} records, faults every ~{args.every} s", flush=True)
            began = time.monotonic()
            _ingest(csv_path, job)
            watch, stop = Watch(), threading.Event()
            threading.Thread(target=watch.run, args=(stop,), daemon=True).start()
            fault_log: list[Fault] = []
            while time.monotonic() - began < args.duration:
                time.sleep(rng.uniform(0.5, 1.5) * args.every)
                if time.monotonic() - began >= args.duration:
                    break
                fault = Fault(rng.choice(targets), time.monotonic() - began, None)
                fault.pid = faults.kill(faults.VICTIMS[fault.victim])
                if fault.pid is not None:
                    watch.killed.add(fault.pid)
                print(f"chaos: {fault.at:7.1f} s  SIGKILL {fault.victim} (pid {fault.pid})", flush=True)
                _recover(fault, began, args.recovery_timeout)
                print(f"chaos:            back in {fault.back_s}, all serving in {fault.all_serving_s}", flush=True)
                fault_log.append(fault)
            status = None
            while time.monotonic() - began < args.duration + args.settle:
                status = _job_status(job)
                if status is not None and status.done:
                    break
                time.sleep(2)
            stop.set()
            elapsed = time.monotonic() - began
            report = {
                "seed": seed,
                "job": job,
                "finished": bool(status and status.done),
                "seconds": round(elapsed, 1),
                "records_per_second": round(args.records / elapsed, 2),
                "faults": [asdict(f) for f in fault_log],
                "faults_per_victim": Counter(f.victim for f in fault_log),
                "recovery_back_s": _percentiles([f.back_s for f in fault_log if f.back_s is not None]),
                "recovery_all_serving_s": _percentiles(
                    [f.all_serving_s for f in fault_log if f.all_serving_s is not None]
                ),
                "not_recovered": sum(1 for f in fault_log if f.all_serving_s is None),
                "service_exits": watch.exits,
                **_audit(bus, job, args.records, start),
            }
    text = json.dumps(report, indent=1, default=str)
    if args.report:
        args.report.write_text(text)
    print(text)
    ok = report["finished"] and not (report["lost"] or report["doubled"] or report["wrong"] or report["service_exits"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
