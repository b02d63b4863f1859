"""Cancelling a job ends its unfetched records as failed(cancelled); the job still reaches done."""

from __future__ import annotations

from pipeline_helpers import outcomes, submit, unique_job, wait_done

from taxonstream.cli.main import main as taxonstream
from taxonstream.v1.messages_pb2 import Outcome


def test_cancel_ends_the_rest_of_a_job(fetcher, site, capsys):
    images = site.images(60)
    job = unique_job("cancel")
    submit(fetcher, job, [site.url("slow", image) for image in images])
    assert taxonstream(["jobs", job, "--cancel"]) == 0
    assert "cancelled" in capsys.readouterr().out

    status = wait_done(fetcher, job)
    assert status.cancelled
    assert status.failed_by_reason["fetcher:cancelled"] >= 1
    ended = outcomes(fetcher, job)
    assert sorted(ended) == list(range(60)), "cancelled or not, every record ends"
    assert {o.state for o in ended.values()} <= {Outcome.INDEXED, Outcome.FAILED}
    assert all(o.reason == "cancelled" for o in ended.values() if o.state == Outcome.FAILED)
