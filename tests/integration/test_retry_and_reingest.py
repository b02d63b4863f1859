"""Failures can be retried alone; a list ingested again is not downloaded again unless forced."""

from __future__ import annotations

from pipeline_helpers import outcomes, unique_job, wait_done

from taxonstream.cli.main import main as taxonstream
from taxonstream.v1 import fetcher_pb2
from taxonstream.v1.messages_pb2 import Outcome, SourceRecord


def submit(fetcher, job_id: str, urls: list[str], force: bool = False):
    spec = fetcher_pb2.JobSpec(job_id=job_id, source="test", force=force)
    requests = [fetcher_pb2.SubmitJobRequest(spec=spec)]
    requests += [fetcher_pb2.SubmitJobRequest(record=SourceRecord(url=u)) for u in urls]
    return fetcher.SubmitJob(iter(requests), timeout=120)


def test_retry_requeues_only_the_failures(fetcher, site, capsys):
    images = site.images(4)
    names = [p.relative_to(site.directory).as_posix() for p in images]
    site.gone.update(names[:2])  # the provider is down for two of them, for now
    job = unique_job("retry")
    submit(fetcher, job, [site.url("toggle", p) for p in images])
    status = wait_done(fetcher, job, timeout=300)
    assert (status.indexed, status.failed) == (2, 2)
    asked_before = {n: site.requests[f"/toggle/{n}"] for n in names}

    site.gone.difference_update(names[:2])
    assert taxonstream(["jobs", "retry", job, "--failed"]) == 0
    assert "4 indexed, 0 duplicate, 0 failed" in capsys.readouterr().out
    ended = outcomes(fetcher, job)
    assert [o.state for o in ended.values()] == [Outcome.INDEXED] * 4
    asked_after = {n: site.requests[f"/toggle/{n}"] for n in names}
    assert [asked_after[n] - asked_before[n] for n in names] == [1, 1, 0, 0], "only the failures were fetched again"


def test_a_list_ingested_again_is_not_downloaded_again_unless_forced(fetcher, site):
    images = site.images(3)
    urls = [site.url("img", p) for p in images]
    first = unique_job("first")
    submit(fetcher, first, urls)
    assert wait_done(fetcher, first, timeout=300).indexed == 3
    paths = [f"/img/{p.relative_to(site.directory).as_posix()}" for p in images]
    asked = [site.requests[p] for p in paths]

    again = unique_job("again")
    submit(fetcher, again, urls)
    status = wait_done(fetcher, again, timeout=300)
    assert (status.duplicate, status.failed) == (3, 0), "the same images, already in the collection"
    assert [site.requests[p] for p in paths] == asked, "nothing was downloaded again"

    forced = unique_job("forced")
    submit(fetcher, forced, urls, force=True)
    assert wait_done(fetcher, forced, timeout=300).duplicate == 3
    assert [site.requests[p] - a for p, a in zip(paths, asked, strict=True)] == [1, 1, 1]
